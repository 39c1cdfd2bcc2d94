//! One request through both gateways makes one trace: A's client span is
//! the root, B's server span its child and the app's parent, with the
//! expected span attributes.

use crate::harness::{chain, of_trace};
use crate::otlp::{hex, Collector};
use crate::support::http::{client, get};
use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_make_one_trace_and_the_app_continues_it() {
    let collector = Collector::start().await;
    let c = chain(100.0, collector.addr, vec![], vec![]).await;
    let http = client();
    let (status, _, body) = get(
        &http,
        c.entry,
        "reviews:9080",
        "/reviews/1?u=x",
        &[("x-req", "fresh")],
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "hello"));

    // The app got B's span as its parent, in W3C and (as nobody chose a
    // style) B3 form.
    let tp = c
        .app
        .header("fresh", "traceparent")
        .expect("traceparent reached the app");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[3], "01", "sampled");
    let trace = parts[1].to_string();
    assert_eq!(
        c.app.header("fresh", "x-b3-traceid").as_deref(),
        Some(trace.as_str())
    );

    let spans = collector
        .wait_for("both hops", WAIT, |s| of_trace(s, &trace).len() >= 2)
        .await;
    let spans = of_trace(&spans, &trace);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let a = spans
        .iter()
        .find(|s| s.attr("isthmus.cluster").as_deref() == Some("cluster-a"))
        .expect("span from cluster-a");
    let b = spans
        .iter()
        .find(|s| s.attr("isthmus.cluster").as_deref() == Some("cluster-b"))
        .expect("span from cluster-b");
    assert!(a.span.parent_span_id.is_empty(), "A started the trace");
    assert_eq!(b.span.parent_span_id, a.span.span_id, "B is A's child");
    assert_eq!(hex(&b.span.span_id), parts[2], "the app's parent is B");
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    assert_eq!(a.span.kind, SpanKind::Client as i32);
    assert_eq!(b.span.kind, SpanKind::Server as i32);
    assert_eq!(a.service, "productpage.default");
    assert_eq!(b.service, "reviews.default");
    for s in [a, b] {
        assert_eq!(s.attr("http.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("http.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("component").as_deref(), Some("proxy"));
        assert_eq!(s.attr("istio.namespace").as_deref(), Some("default"));
        assert_eq!(
            s.attr("http.url").as_deref(),
            Some("http://reviews:9080/reviews/1"),
            "query strings stay out of spans"
        );
        assert!(s.attr("node_id").is_some_and(|n| n.starts_with("sidecar~")));
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    }
    assert_eq!(
        a.attr("upstream_cluster").as_deref(),
        Some("outbound|9080||reviews.default.svc.cluster.local")
    );
    assert_eq!(
        a.attr("istio.canonical_service").as_deref(),
        Some("productpage")
    );
    drop((c.a, c.b, c.a_ads));
}
