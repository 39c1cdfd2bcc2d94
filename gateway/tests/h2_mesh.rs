//! HTTP/2 and gRPC-style streaming across the mesh path:
//! h2c client → sidecar A (HCM, RDS; h2 upstream with mTLS origination) →
//! east-west gateway (SNI passthrough, no keys) → sidecar B (mTLS
//! termination, HCM with inline routes, h2 to the app) → h2c app.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::ads::ScriptedAds;
use support::http::*;
use support::pki::Ca;
use support::resources::*;
use support::*;

const TD: &str = "spiffe://cluster.local/ns/default/sa";
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";
const SNI: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";
const INBOUND: &str = "inbound|9080||";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_streaming_over_h2_through_sidecar_eastwest_sidecar() {
    init();
    let root = Ca::root();
    let productpage = format!("{TD}/productpage");
    let reviews = format!("{TD}/reviews");
    let app = HttpBackend::start("reviews-v1").await;

    let ads_b = ScriptedAds::start().await;
    ads_b.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads_b.set(CDS, vec![named(INBOUND, with_h2(eds_cluster(INBOUND)))]);
    ads_b.set(EDS, vec![named(INBOUND, cla(INBOUND, &[(0, &[app.addr])]))]);
    let inbound_routes = RouteSpecifier::RouteConfig(route_config(
        "inbound|9080",
        &["*"],
        vec![prefix_route("default", "/", to_cluster(INBOUND))],
    ));
    ads_b.set(
        LDS,
        vec![named(
            "virtualInbound",
            inbound_listener_with(
                "virtualInbound",
                any_port(),
                hcm(inbound_routes),
                &[&productpage],
            ),
        )],
    );
    let (_cert_b_tx, cert_b) = root.intermediate("cluster-b").workload(&root, &reviews);
    let sidecar_b = gateway(&ads_b, "sidecar", Some(cert_b)).await;
    assert!(
        sidecar_b.wait_ready(WAIT).await,
        "sidecar B never became ready"
    );
    let inbound = sidecar_b.listener_address("virtualInbound").expect("bound");

    let ads_ew = ScriptedAds::start().await;
    ads_ew.set(CDS, vec![named(SNI, eds_cluster(SNI))]);
    ads_ew.set(EDS, vec![named(SNI, cla(SNI, &[(0, &[inbound])]))]);
    ads_ew.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", any_port(), &[(SNI, SNI)]),
        )],
    );
    let eastwest = gateway(&ads_ew, "east-west", None).await;
    assert!(
        eastwest.wait_ready(WAIT).await,
        "east-west never became ready"
    );
    let ew = eastwest.listener_address("ew").expect("bound");

    let ads_a = ScriptedAds::start().await;
    ads_a.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads_a.set(
        CDS,
        vec![named(
            CLUSTER,
            with_h2(mtls_cluster(CLUSTER, SNI, &[&reviews])),
        )],
    );
    ads_a.set(EDS, vec![named(CLUSTER, cla(CLUSTER, &[(0, &[ew])]))]);
    ads_a.set(
        RDS,
        vec![named(
            "9080",
            route_config(
                "9080",
                &["reviews", "reviews:9080"],
                vec![prefix_route("default", "/", to_cluster(CLUSTER))],
            ),
        )],
    );
    ads_a.set(
        LDS,
        vec![named(
            "outbound_9080",
            http_listener("outbound_9080", any_port(), rds("9080")),
        )],
    );
    let (_cert_a_tx, cert_a) = root.intermediate("cluster-a").workload(&root, &productpage);
    let sidecar_a = gateway(&ads_a, "sidecar", Some(cert_a)).await;
    assert!(
        sidecar_a.wait_ready(WAIT).await,
        "sidecar A never became ready"
    );
    let outbound = sidecar_a.listener_address("outbound_9080").expect("bound");

    // h2c with prior knowledge, like a gRPC client.
    let (mut send, _conn) = h2c_connect(outbound).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let req = ::http::Request::builder()
        .method("POST")
        .uri("http://reviews:9080/reviews.Reviews/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .expect("request");
    tx.send(Ok(Frame::data(Bytes::from_static(b"message-1"))))
        .await
        .expect("send 1");
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("response head in time")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-backend").map(|v| v.as_bytes()),
        Some(&b"reviews-v1"[..])
    );
    let mut body = resp.into_body();
    // The first message comes back before the second is sent: real streaming.
    let f = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("frame in time")
        .expect("frame")
        .expect("ok");
    assert_eq!(
        f.into_data().expect("data"),
        Bytes::from_static(b"message-1")
    );
    tx.send(Ok(Frame::data(Bytes::from_static(b"message-2"))))
        .await
        .expect("send 2");
    let f = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("frame in time")
        .expect("frame")
        .expect("ok");
    assert_eq!(
        f.into_data().expect("data"),
        Bytes::from_static(b"message-2")
    );
    drop(tx);
    let mut trailers = None;
    while let Some(f) = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("end in time")
    {
        let f = f.expect("frame");
        if let Ok(t) = f.into_trailers() {
            trailers = Some(t);
        }
    }
    let trailers = trailers.expect("gRPC trailers reach the client");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );

    // Sidecar B saw the caller's verified SPIFFE identity.
    let (_, m) = admin_get(sidecar_b.admin_address(), "/metrics").await;
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total")
            && l.contains(&format!("source_principal=\"{productpage}\""))
            && l.contains("reporter=\"destination\"")),
        "inbound metrics carry the caller identity:\n{m}"
    );
}
