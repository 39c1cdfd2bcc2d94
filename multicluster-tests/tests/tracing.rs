//! One HTTP call across two clusters is one trace: productpage's sidecar
//! (us-west, client span) → us-east's east-west gateway (TLS passthrough:
//! no HTTP span, as in Istio) → a reviews sidecar (us-east, server span),
//! exported by both sidecars to an OTLP receiver in this test, with the
//! tracing and access-log settings coming from each cluster's MeshConfig
//! through xDS. Every hop also writes a JSON access log line.

mod common;
#[path = "../../gateway/tests/support/otlp.rs"]
mod otlp;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use isthmus_multicluster_tests::FederationSpec;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use otlp::{hex, Collector};

const TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CALLER_SPAN: &str = "eee19b7ec3c1b174";
const PRODUCTPAGE_ID: &str = "spiffe://demo.isthmus.local/ns/default/sa/bookinfo-productpage";

async fn call(target: std::net::SocketAddr) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .expect("connect to productpage's sidecar");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/reviews/1")
        .header("host", "reviews")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn json_lines(
    path: &std::path::Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| pred(v))
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching access log line in {}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_across_two_clusters_is_one_trace() {
    let collector = Collector::start().await;
    let logs = tempfile::tempdir().expect("tempdir");
    let mut spec = FederationSpec::bookinfo();
    for c in spec.clusters.iter_mut() {
        for s in c.services.iter_mut() {
            s.protocol = "HTTP".into();
        }
        c.mesh_extra = format!(
            "  enableTracing: true
  defaultConfig:
    tracing:
      sampling: 100.0
  extensionProviders:
  - name: otel
    opentelemetry:
      service: 127.0.0.1
      port: {port}
  defaultProviders:
    tracing:
    - otel
  accessLogFile: {dir}/{name}.log
  accessLogEncoding: JSON
",
            port = collector.addr.port(),
            dir = logs.path().display(),
            name = c.name,
        );
    }
    let fed = common::start(spec, "us-east").await.unwrap();
    let target = fed
        .load("us-west", "productpage-v1", "reviews", 1.0)
        .unwrap()
        .target;
    let (status, body) = call(target).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("us-east"), "served by us-east: {body}");

    let spans = collector
        .wait_for(
            "the client and server sidecar spans",
            Duration::from_secs(15),
            |s| s.iter().filter(|r| hex(&r.span.trace_id) == TRACE).count() >= 2,
        )
        .await;
    let ours: Vec<_> = spans
        .iter()
        .filter(|r| hex(&r.span.trace_id) == TRACE)
        .collect();
    assert_eq!(ours.len(), 2, "exactly one span per sidecar hop: {ours:#?}");
    let client = ours
        .iter()
        .find(|r| r.attr("isthmus.cluster").as_deref() == Some("us-west"))
        .expect("a span from us-west");
    let server = ours
        .iter()
        .find(|r| r.attr("isthmus.cluster").as_deref() == Some("us-east"))
        .expect("a span from us-east");
    assert_eq!(client.span.kind, SpanKind::Client as i32);
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&client.span.parent_span_id),
        CALLER_SPAN,
        "continues the caller's trace"
    );
    assert_eq!(
        server.span.parent_span_id, client.span.span_id,
        "the server sidecar's span is the client sidecar's child, across the east-west gateway"
    );
    assert_eq!(client.service, "productpage.default");
    assert_eq!(server.service, "reviews.default");
    assert_eq!(client.attr("http.status_code").as_deref(), Some("200"));
    assert_eq!(
        client.attr("upstream_cluster").as_deref(),
        Some("outbound|9080||reviews.default.svc.cluster.local")
    );
    assert_eq!(
        server.attr("peer.principal").as_deref(),
        Some(PRODUCTPAGE_ID)
    );

    // Access logs of both sidecars name the same trace. (The east-west
    // gateway logs its passthrough connections as TCP lines when they
    // close; pooled connections outlive this test, so they are not awaited.)
    let west = json_lines(&logs.path().join("us-west.log"), |v| {
        v["trace_id"] == TRACE && v["reporter"] == "source"
    })
    .await;
    assert_eq!(west["response_code"], 200);
    assert_eq!(west["cluster"], "us-west");
    assert_eq!(west["source_workload"], "productpage-v1");
    let east = json_lines(&logs.path().join("us-east.log"), |v| {
        v["trace_id"] == TRACE && v["reporter"] == "destination"
    })
    .await;
    assert_eq!(east["source_principal"], PRODUCTPAGE_ID);
    assert_eq!(east["cluster"], "us-east");
    assert_eq!(
        east["destination_service"],
        "reviews.default.svc.cluster.local"
    );
    fed.shutdown().await;
}
