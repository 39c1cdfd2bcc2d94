//! One call across clusters: productpage's sidecar (us-west) → mTLS through
//! us-east's east-west gateway (SNI passthrough) → a reviews sidecar → the
//! app, with the SPIFFE identities checked on both ends.

mod common;

use isthmus_multicluster_tests::admin::{metrics, sum};
use isthmus_multicluster_tests::load::request;
use isthmus_multicluster_tests::FederationSpec;

const OPENED: &str = "isthmus_gateway_tcp_connections_opened_total";
const REVIEWS_ID: &str = "spiffe://demo.isthmus.local/ns/default/sa/bookinfo-reviews";
const PRODUCTPAGE_ID: &str = "spiffe://demo.isthmus.local/ns/default/sa/bookinfo-productpage";
const SNI_CLUSTER: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_crosses_the_east_west_gateway_with_identities_on_both_ends() {
    let fed = common::start(FederationSpec::bookinfo(), "us-east")
        .await
        .unwrap();
    let west = fed.cluster("us-west").unwrap().block;
    let east = fed.cluster("us-east").unwrap().block;
    let caller_admin = west.workload_admin(1);
    let callee_admins = [east.workload_admin(1), east.workload_admin(2)];

    let before_out = sum(
        &metrics(caller_admin).await.unwrap(),
        OPENED,
        &[("destination_principal", REVIEWS_ID)],
    );
    let mut before_in = 0.0;
    for a in callee_admins {
        before_in += sum(
            &metrics(a).await.unwrap(),
            OPENED,
            &[("source_principal", PRODUCTPAGE_ID)],
        );
    }
    let before_gw = sum(
        &metrics(east.eastwest_admin()).await.unwrap(),
        "isthmus_gateway_upstream_cx_total",
        &[("cluster", SNI_CLUSTER)],
    );

    const N: usize = 20;
    let cfg = fed
        .load("us-west", "productpage-v1", "reviews", 1.0)
        .unwrap();
    let mut versions = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..N {
        let l = request(&cfg).await.unwrap();
        assert_eq!(
            l.cluster, "us-east",
            "reviews must be served by us-east (us-west fails over there first)"
        );
        *versions.entry(l.version).or_default() += 1;
    }
    // ROUND_ROBIN over v1 and v2 of us-east.
    assert_eq!(versions.len(), 2, "{versions:?}");

    // The caller's sidecar verified the callee's identity...
    let out = sum(
        &metrics(caller_admin).await.unwrap(),
        OPENED,
        &[("destination_principal", REVIEWS_ID)],
    );
    assert!(
        out - before_out >= N as f64,
        "caller saw {} connections to {REVIEWS_ID}",
        out - before_out
    );
    // ...the callee's sidecars verified the caller's...
    let mut inbound = 0.0;
    for a in callee_admins {
        inbound += sum(
            &metrics(a).await.unwrap(),
            OPENED,
            &[("source_principal", PRODUCTPAGE_ID)],
        );
    }
    assert!(
        inbound - before_in >= N as f64,
        "callees saw {} connections from {PRODUCTPAGE_ID}",
        inbound - before_in
    );
    // ...and every connection went through us-east's east-west gateway,
    // routed by SNI to the passthrough cluster.
    let gw = sum(
        &metrics(east.eastwest_admin()).await.unwrap(),
        "isthmus_gateway_upstream_cx_total",
        &[("cluster", SNI_CLUSTER)],
    );
    assert!(
        gw - before_gw >= N as f64,
        "east-west gateway forwarded {} connections",
        gw - before_gw
    );
    // The gateway holds no workload keys: it never terminates TLS, so it
    // knows neither identity.
    let gw_samples = metrics(east.eastwest_admin()).await.unwrap();
    assert_eq!(
        sum(&gw_samples, OPENED, &[("source_principal", PRODUCTPAGE_ID)]),
        0.0
    );
    fed.shutdown().await;
}
