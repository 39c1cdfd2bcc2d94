//! Cross-cluster traffic over the QUIC tunnel between east-west gateways,
//! wired by the control planes from `federation.peers[].transport: quic`
//! and `gateways.eastWestQuic`: productpage's sidecar (us-west) → us-west's
//! east-west gateway (15444, SNI read, not decrypted) ⇒ QUIC ⇒ us-east's
//! east-west gateway → a reviews sidecar. Then UDP to us-east's gateway is
//! cut: traffic falls back to TCP+TLS passthrough, and no request started
//! after the fallback kicked in fails. The gateways' metrics say which
//! transport carried each connection.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use isthmus_multicluster_tests::admin::{metrics, sum, Sample};
use isthmus_multicluster_tests::faultproxy::Faults;
use isthmus_multicluster_tests::load::{request, Load};
use isthmus_multicluster_tests::spec::{ClusterSpec, ServiceSpec, WorkloadSpec};
use isthmus_multicluster_tests::FederationSpec;

const TUNNEL: &str = "isthmus_gateway_tunnel_connections_total";

fn spec() -> FederationSpec {
    let mut productpage = ServiceSpec::new("productpage", 9090);
    productpage.export = false;
    let mut west = ClusterSpec::new("us-west", "us-west", "us-west-2a")
        .service(productpage)
        .workload(WorkloadSpec::new("productpage", "v1"));
    west.network = "net-west".to_string();
    west.tunnel = true;
    let mut east = ClusterSpec::new("us-east", "us-east", "us-east-1a")
        .service(ServiceSpec::new("reviews", 9080))
        .workload(WorkloadSpec::new("reviews", "v1"))
        .workload(WorkloadSpec::new("reviews", "v2"));
    east.network = "net-east".to_string();
    east.tunnel = true;
    FederationSpec::new(vec![east, west])
}

async fn transport_count(admin: std::net::SocketAddr, transport: &str) -> f64 {
    sum(
        &metrics(admin).await.unwrap_or_default(),
        TUNNEL,
        &[("transport", transport)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_carries_cross_cluster_traffic_and_falls_back_to_tcp() {
    let fed = common::start(spec(), "us-east").await.unwrap();
    let west_gw = fed.cluster("us-west").unwrap().block.eastwest_admin();
    let east = fed.cluster("us-east").unwrap();
    let east_gw = east.block.eastwest_admin();
    let cfg = fed
        .load("us-west", "productpage-v1", "reviews", 1.0)
        .unwrap();

    // Over the tunnel (deltas: start-up traffic may have taken TCP while
    // the first QUIC handshake was slower than the 500 ms wait).
    const N: usize = 30;
    let passthrough = |m: &[Sample]| {
        sum(
            m,
            "isthmus_gateway_downstream_cx_total",
            &[("listener", "0.0.0.0_15443")],
        )
    };
    let quic_before = transport_count(west_gw, "quic").await;
    let tcp_before = transport_count(west_gw, "tcp").await;
    let direct_before = passthrough(&metrics(east_gw).await.unwrap());
    let mut over_quic = BTreeMap::<String, usize>::new();
    for _ in 0..N {
        let l = request(&cfg).await.expect("request over the tunnel");
        *over_quic
            .entry(format!("{}/{}", l.cluster, l.version))
            .or_default() += 1;
    }
    let quic = transport_count(west_gw, "quic").await - quic_before;
    assert!(
        quic >= N as f64,
        "us-west's gateway sent {quic} of {N} connections through the QUIC tunnel"
    );
    assert_eq!(
        transport_count(west_gw, "tcp").await - tcp_before,
        0.0,
        "no TCP fallback while UDP works"
    );
    // us-east's gateway served them from its tunnel, not from its TCP
    // passthrough listener (tunnel streams are not listener connections).
    assert_eq!(
        passthrough(&metrics(east_gw).await.unwrap()) - direct_before,
        0.0,
        "us-east's TCP passthrough listener saw tunnel traffic"
    );

    // Cut UDP to us-east's gateway, under load.
    let link = east.tunnel_link().expect("us-east runs the tunnel");
    let mut load_cfg = fed
        .load("us-west", "productpage-v1", "reviews", 20.0)
        .unwrap();
    load_cfg.timeout = Duration::from_secs(10);
    let load = Load::start(load_cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.set(Faults {
        cut: true,
        ..Faults::default()
    });
    let cut_at = Instant::now();
    let deadline = cut_at + Duration::from_secs(30);
    let tcp_at_cut = transport_count(west_gw, "tcp").await;
    while transport_count(west_gw, "tcp").await == tcp_at_cut {
        assert!(Instant::now() < deadline, "traffic never fell back to TCP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fallback_at = Instant::now();
    // Keep the load running for a while on the fallback path.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let outcomes = load.finish().await;
    let after: Vec<_> = outcomes.iter().filter(|o| o.start >= fallback_at).collect();
    assert!(
        after.len() >= 50,
        "only {} requests after the fallback",
        after.len()
    );
    let failed: Vec<_> = after.iter().filter(|o| !o.ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed after the fallback ({:.1} s after the cut): {:?}",
        failed.len(),
        after.len(),
        fallback_at.duration_since(cut_at).as_secs_f64(),
        failed.first().map(|o| &o.result)
    );

    // Same results over TCP as over QUIC: both versions of us-east.
    let mut over_tcp = BTreeMap::<String, usize>::new();
    let tcp_before = transport_count(west_gw, "tcp").await;
    for _ in 0..N {
        let l = request(&cfg).await.expect("request over the TCP fallback");
        *over_tcp
            .entry(format!("{}/{}", l.cluster, l.version))
            .or_default() += 1;
    }
    assert!(transport_count(west_gw, "tcp").await - tcp_before >= N as f64);
    let keys = |m: &BTreeMap<String, usize>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&over_quic),
        keys(&over_tcp),
        "{over_quic:?} vs {over_tcp:?}"
    );
    assert_eq!(
        keys(&over_quic),
        vec!["us-east/v1".to_string(), "us-east/v2".to_string()]
    );
}
