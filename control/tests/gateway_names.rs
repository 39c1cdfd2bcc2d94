//! East-west gateway hostnames are resolved by the control plane, with
//! TTLs, against a real DNS server, and a name whose lookups fail keeps its
//! last good addresses.

#[path = "../../gateway/tests/support/testdns.rs"]
mod testdns;

use std::sync::Arc;
use std::time::Duration;

use isthmus_control::app::gateway_names;
use isthmus_federation::model::ClusterInfo;
use isthmus_federation::RegistrySnapshot;
use isthmus_gateway::resolve::{Resolver, ResolverOptions};
use tokio::sync::watch;

fn registry(revision: u64, eastwest: &str) -> Arc<RegistrySnapshot> {
    let mut s = RegistrySnapshot {
        revision,
        ..Default::default()
    };
    s.clusters.insert(
        "us-west".into(),
        ClusterInfo {
            id: "us-west".into(),
            network: "net-west".into(),
            locality: Default::default(),
            eastwest_tcp: vec![eastwest.to_string()],
            eastwest_quic: Vec::new(),
            ingress: Vec::new(),
            intermediate_pem: String::new(),
            roots_pem: Vec::new(),
        },
    );
    Arc::new(s)
}

async fn wait_for(rx: &mut watch::Receiver<Arc<RegistrySnapshot>>, want: &[&str]) {
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|s| s.clusters["us-west"].eastwest_tcp == want),
    )
    .await
    .is_ok();
    assert!(
        got,
        "gateway addresses never became {want:?}; last: {:?}",
        rx.borrow().clusters["us-west"].eastwest_tcp
    );
}

#[tokio::test]
async fn gateway_names_follow_dns_ttls_and_keep_the_last_good_addresses() {
    let dns = testdns::TestDns::start().await;
    dns.set("ew.us-west.mesh.test", &["127.0.0.5".parse().unwrap()], 1);
    let resolver = Resolver::new(&ResolverOptions {
        upstream: vec![dns.addr],
        timeout: Some(Duration::from_secs(1)),
    })
    .expect("resolver");

    let (reg_tx, reg_rx) = watch::channel(registry(1, "ew.us-west.mesh.test:15443"));
    let first = gateway_names::rewrite(&reg_rx.borrow(), &Default::default());
    assert!(
        first.clusters["us-west"].eastwest_tcp.is_empty(),
        "an unresolved name must never reach EDS"
    );
    let (out_tx, mut out_rx) = watch::channel(first);
    let task = tokio::spawn(gateway_names::run(reg_rx, out_tx, resolver));

    wait_for(&mut out_rx, &["127.0.0.5:15443"]).await;

    // The load balancer moved: picked up after the (clamped) TTL.
    dns.set("ew.us-west.mesh.test", &["127.0.0.6".parse().unwrap()], 1);
    wait_for(&mut out_rx, &["127.0.0.6:15443"]).await;

    // DNS breaks: registry changes keep flowing and the name keeps its
    // last good address across failed lookups.
    dns.fail(true);
    let before = dns.queries();
    reg_tx
        .send(registry(2, "ew.us-west.mesh.test:15443"))
        .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dns.queries() < before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resolver never retried the failing name"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = out_rx.borrow().clone();
    assert_eq!(now.revision, 2, "registry changes must not wait for DNS");
    assert_eq!(now.clusters["us-west"].eastwest_tcp, ["127.0.0.6:15443"]);

    // An IP address needs no lookup and replaces the name at once.
    reg_tx.send(registry(3, "127.0.0.7:15443")).expect("send");
    wait_for(&mut out_rx, &["127.0.0.7:15443"]).await;

    drop(reg_tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the stage ends when the registry closes")
        .expect("no panic");
}
