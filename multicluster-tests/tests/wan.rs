//! The WAN between clusters, emulated in user space by the harness's fault
//! proxy in front of us-east's east-west gateway (the federation
//! advertises the proxy): added latency shows in every cross-cluster call,
//! and a cut link sends new calls to the next locality.

mod common;

use std::time::Duration;

use isthmus_multicluster_tests::{Faults, FederationSpec, Load, Summary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_on_the_wan_link_shows_and_a_cut_link_fails_over() {
    let mut spec = FederationSpec::bookinfo();
    spec.clusters[0].wan_proxy = true;
    let fed = common::start(spec, "us-east").await.unwrap();
    let wan = fed.cluster("us-east").unwrap().wan().unwrap();
    let fed_ref = &fed;
    let measure = |rate: f64| async move {
        let load = Load::start(
            fed_ref
                .load("us-west", "productpage-v1", "reviews", rate)
                .unwrap(),
        );
        tokio::time::sleep(2 * common::SECOND).await;
        Summary::of(&load.finish().await)
    };

    wan.set(Faults {
        latency: Duration::from_millis(40),
        ..Faults::default()
    });
    let slow = measure(20.0).await;
    eprintln!("40ms one-way: {slow:?}");
    assert_eq!(slow.failed, 0, "{:?}", slow.failures);
    assert_eq!(slow.in_cluster("us-east"), slow.ok, "{:?}", slow.landings);
    // The TLS handshake and the request each cross the link there and
    // back: at least two round trips of 80ms.
    assert!(slow.p50 >= Duration::from_millis(160), "p50 {:?}", slow.p50);

    wan.set(Faults {
        cut: true,
        ..Faults::default()
    });
    let cut = measure(common::rate()).await;
    eprintln!("cut: {cut:?}");
    assert_eq!(cut.in_cluster("us-east"), 0, "{:?}", cut.landings);
    assert!(cut.in_cluster("eu-central") > 0, "{:?}", cut.landings);
    // The proxy accepts and closes at once, like a link that drops: the
    // caller's sidecar counts that as a failed upstream connect and uses
    // the next priority, so no request fails.
    assert_eq!(cut.failed, 0, "{:?}", cut.failures);

    wan.set(Faults::default());
    fed.wait_lands(
        "us-west",
        "productpage-v1",
        "reviews",
        "us-east",
        10 * common::SECOND,
    )
    .await
    .unwrap();
    fed.shutdown().await;
}
