//! Locality: with everything healthy, calls stay in the preferred locality
//! (≥ 95%): a same-zone instance first; without one, the region the
//! DestinationRule fails over to (us-west → us-east), not eu-central.

mod common;

use isthmus_multicluster_tests::render;
use isthmus_multicluster_tests::{FederationSpec, Load, ServiceSpec, Summary, WorkloadSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stay_in_the_preferred_locality() {
    let mut spec = FederationSpec::bookinfo();
    let west = &mut spec.clusters[1];
    assert_eq!(west.name, "us-west");
    let mut local = ServiceSpec::new("reviews", 9080);
    local.export = false;
    west.services.push(local);
    west.workloads.push(WorkloadSpec::new("reviews", "v1"));
    let west_spec = west.clone();
    let fed = common::start(spec, "us-west").await.unwrap();

    let measure = || async {
        let load = Load::start(
            fed.load("us-west", "productpage-v1", "reviews", common::rate())
                .unwrap(),
        );
        tokio::time::sleep(3 * common::SECOND).await;
        Summary::of(&load.finish().await)
    };

    let same_zone = measure().await;
    eprintln!("with a local instance: {same_zone:?}");
    assert_eq!(same_zone.failed, 0, "{:?}", same_zone.failures);
    assert!(
        same_zone.total as f64 >= common::rate() * 2.0,
        "load too thin: {}",
        same_zone.total
    );
    assert!(
        same_zone.share("us-west") >= 0.95,
        "{:?}",
        same_zone.landings
    );

    // The local instance leaves the config: the next locality is us-east.
    let mut without = west_spec.clone();
    without.workloads.retain(|w| w.service != "reviews");
    let block = fed.cluster("us-west").unwrap().block;
    fed.write_config(
        "us-west",
        "workloads.yaml",
        &render::workloads(&without, block),
    )
    .unwrap();
    fed.wait_lands(
        "us-west",
        "productpage-v1",
        "reviews",
        "us-east",
        20 * common::SECOND,
    )
    .await
    .unwrap();
    let failover_region = measure().await;
    eprintln!("without: {failover_region:?}");
    assert_eq!(failover_region.failed, 0, "{:?}", failover_region.failures);
    assert!(
        failover_region.share("us-east") >= 0.95,
        "{:?}",
        failover_region.landings
    );
    assert_eq!(
        failover_region.in_cluster("eu-central"),
        0,
        "{:?}",
        failover_region.landings
    );
    fed.shutdown().await;
}
