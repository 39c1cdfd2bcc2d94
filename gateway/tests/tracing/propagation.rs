//! Trace context propagation at 0% sampling: an unsampled W3C caller, a
//! sampled W3C caller with tracestate, B3 multi- and single-header callers,
//! and malformed `traceparent` headers.

use crate::harness::{chain, of_trace};
use crate::otlp::{hex, Collector};
use crate::support::http::{client, get};
use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_w3c_b3_malformed_and_zero_sampling() {
    let collector = Collector::start().await;
    // 0%: only callers that decided to sample produce spans.
    let c = chain(0.0, collector.addr, vec![], vec![]).await;
    let http = client();

    // 1. Not sampled by the caller: propagated, no spans.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[("x-req", "unsampled"), ("traceparent", unsampled)],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    let tp = c
        .app
        .header("unsampled", "traceparent")
        .expect("propagated");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(tp.ends_with("-00"), "the caller's decision is kept: {tp}");
    assert!(
        !tp.contains("b7ad6b7169203331"),
        "a new parent per hop: {tp}"
    );
    assert!(
        c.app.header("unsampled", "x-b3-traceid").is_none(),
        "W3C in, W3C out"
    );

    // 2. A sampled W3C caller: continued, with tracestate, despite 0%.
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[
            ("x-req", "w3c"),
            ("traceparent", sampled),
            ("tracestate", "vendor=x"),
        ],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(
        c.app.header("w3c", "tracestate").as_deref(),
        Some("vendor=x")
    );
    let spans = collector
        .wait_for("the W3C trace", WAIT, |s| {
            of_trace(s, "4bf92f3577b34da6a3ce929d0e0e4736").len() >= 2
        })
        .await;
    let w3c = of_trace(&spans, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        w3c.iter()
            .any(|s| hex(&s.span.parent_span_id) == "00f067aa0ba902b7"),
        "A's span is the caller's child: {w3c:#?}"
    );
    // Spans are exported in order: the unsampled request's would be here by now.
    assert!(
        of_trace(&spans, "0af7651916cd43dd8448eb211c80319c").is_empty(),
        "unsampled requests produce no spans"
    );

    // 3. B3 multi-header in → B3 out (64-bit trace id kept 64-bit), spans exported.
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[
            ("x-req", "b3"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(
        c.app.header("b3", "x-b3-traceid").as_deref(),
        Some("463ac35c9f6413ad")
    );
    assert_eq!(c.app.header("b3", "x-b3-sampled").as_deref(), Some("1"));
    let b3_parent = c
        .app
        .header("b3", "x-b3-parentspanid")
        .expect("parent span id");
    let spans = collector
        .wait_for("the B3 trace", WAIT, |s| {
            of_trace(s, "0000000000000000463ac35c9f6413ad").len() >= 2
        })
        .await;
    let b3 = of_trace(&spans, "0000000000000000463ac35c9f6413ad");
    assert!(b3
        .iter()
        .any(|s| hex(&s.span.parent_span_id) == "a2fb4a1d1a96d312"));
    assert!(
        b3.iter().any(|s| hex(&s.span.span_id) == b3_parent),
        "the app's B3 parent is B's span"
    );

    // 4. Single-header b3 in → b3 out.
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[
            ("x-req", "b3single"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    let single = c.app.header("b3single", "b3").expect("b3 propagated");
    assert!(
        single.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"),
        "{single}"
    );
    assert!(
        single.contains("-0-"),
        "not sampled, as the caller said: {single}"
    );

    // 5. Malformed: ignored, a new (here unsampled) trace, never an error.
    for (i, bad) in [
        "garbage",
        "00-zz-yy-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ]
    .iter()
    .enumerate()
    {
        let key = format!("bad{i}");
        let (s, _, _) = get(
            &http,
            c.entry,
            "reviews",
            "/",
            &[("x-req", key.as_str()), ("traceparent", bad)],
        )
        .await;
        assert_eq!(s.as_u16(), 200, "{bad}");
        let tp = c
            .app
            .header(&key, "traceparent")
            .expect("a fresh traceparent");
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(!tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{tp}");
    }
    drop((c.a, c.b, c.a_ads));
}
