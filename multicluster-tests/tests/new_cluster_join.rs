//! A new cluster joins a running federation under load (issue 9): us-west's
//! productpage calls reviews, served by us-east, over HTTP with retries.
//! While that load runs, us-north (same region as us-west, another zone)
//! starts with a join token made by `isthmus federation token create`
//! (`isthmus control --join-token-file`, no peers in its MeshConfig, an
//! empty data directory) and exports reviews too. It becomes a voting
//! member (`isthmus federation status` shows it), its endpoints reach the
//! other clusters through the registry, and us-west's traffic moves to it
//! (same region beats another region) without one failed request.

mod common;

use std::time::Duration;

use isthmus_multicluster_tests::scenario::retry_virtual_service;
use isthmus_multicluster_tests::stats::settled_in;
use isthmus_multicluster_tests::{
    wait, ClusterSpec, Federation, FederationSpec, Load, ServiceSpec, Summary, WorkloadSpec,
    READY_LIMIT,
};
use tokio::time::Instant;

/// Connection failures eject a gateway that is not serving yet, so its
/// priority empties and the next one answers (the new cluster's endpoints
/// can reach the registry a moment before its gateway serves them; the
/// retries re-send what failed there).
const OUTLIER: &str = "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 3s
";

fn reviews() -> ServiceSpec {
    let mut s = ServiceSpec::new("reviews", 9080);
    s.protocol = "HTTP".into();
    s
}

fn serving(name: &str, region: &str, zone: &str) -> ClusterSpec {
    ClusterSpec::new(name, region, zone)
        .service(reviews())
        .workload(WorkloadSpec::new("reviews", "v1"))
}

fn caller() -> ClusterSpec {
    let mut productpage = ServiceSpec::new("productpage", 9090);
    productpage.protocol = "HTTP".into();
    productpage.export = false;
    ClusterSpec::new("us-west", "us-west", "us-west-2a")
        .service(productpage)
        .workload(WorkloadSpec::new("productpage", "v1"))
        .config("outlier.yaml", OUTLIER)
        .config(
            "retries.yaml",
            &retry_virtual_service("reviews", "default", &[]),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_joining_under_load_serves_its_share_without_a_failed_request() {
    let mut spec = FederationSpec::new(vec![serving("us-east", "us-east", "us-east-1a"), caller()]);
    if let Ok(filter) = std::env::var("ISTHMUS_TEST_LOG") {
        spec.log_filter = filter;
    }
    let mut fed = Federation::start_for_tests(spec).await.unwrap();
    fed.wait_ready(READY_LIMIT).await.unwrap();
    fed.wait_lands(
        "us-west",
        "productpage-v1",
        "reviews",
        "us-east",
        READY_LIMIT,
    )
    .await
    .unwrap();

    let load = Load::start(
        fed.load("us-west", "productpage-v1", "reviews", common::rate())
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let joined = Instant::now();
    fed.join_cluster(
        serving("us-north", "us-west", "us-west-2b"),
        &["us-east", "us-west"],
    )
    .await
    .unwrap();

    // A member, then a voter (3 voters < the default maximum of 5), as the
    // operator's status command shows it on an old member.
    wait::until(
        "us-north to become a voter",
        Duration::from_secs(60),
        || async {
            let s = fed.federation_status("us-east").await?;
            match s.role_of("us-north") {
                Some("voter") => Ok(()),
                other => Err(format!("us-north is {other:?} in {s:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|t| panic!("{t}\n{}", fed.log_tails(15)));
    let member_after = joined.elapsed();

    // Its cluster record, lease and reviews endpoints are in every registry,
    // and its proxies are up.
    fed.wait_federated(&["us-east", "us-west", "us-north"], READY_LIMIT)
        .await
        .unwrap();
    fed.wait_proxies_ready(&["us-north"], READY_LIMIT)
        .await
        .unwrap();
    // us-west's calls prefer it: same region, where us-east is another.
    fed.wait_lands(
        "us-west",
        "productpage-v1",
        "reviews",
        "us-north",
        READY_LIMIT,
    )
    .await
    .unwrap();
    let traffic_after = joined.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outcomes = load.finish().await;

    let before = Summary::of(outcomes.iter().filter(|o| o.start < joined));
    let during = Summary::of(outcomes.iter().filter(|o| o.start >= joined));
    let total = Summary::of(outcomes.iter());
    let settled = settled_in(&outcomes, "us-north");
    eprintln!(
        "us-north a voter {member_after:?} after its start, first traffic {traffic_after:?}; settled at {:?} after the join\nbefore: {before:#?}\nafter the join: {during:#?}",
        settled.map(|s| s.saturating_duration_since(joined))
    );
    assert!(before.total >= 50, "load too thin: {before:?}");
    assert!(before.share("us-east") >= 0.95, "{:?}", before.landings);
    assert!(during.total >= 300, "load too thin: {during:?}");
    // Zero failed requests throughout the join.
    assert_eq!(total.failed, 0, "{:?}", total.failures);
    // A share of the traffic reached the new cluster, and once it settled
    // there every request stayed (locality).
    let north = during.in_cluster("us-north");
    assert!(north >= 100, "{:?}", during.landings);
    let settled = settled.expect("traffic never settled in us-north");
    let last = Summary::of(outcomes.iter().filter(|o| o.start >= settled));
    assert!(last.total >= 50, "settled too late: {last:?}");

    // Every member lists the same three voters.
    for observer in ["us-east", "us-west", "us-north"] {
        let s = fed.federation_status(observer).await.unwrap();
        for name in ["us-east", "us-west", "us-north"] {
            assert_eq!(s.role_of(name), Some("voter"), "{observer}: {s:?}");
        }
    }
    fed.shutdown().await;
}
