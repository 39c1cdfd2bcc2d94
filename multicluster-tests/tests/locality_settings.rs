//! `localityLbSetting` beyond the default order, through real sidecars and
//! east-west gateways: `distribute` splits us-west's calls 70/30 between
//! us-east and eu-central, then `failoverPriority` on a fixed network label
//! sends them all to eu-central, although us-east is the default failover
//! region of us-west.

mod common;

use std::time::Duration;

use isthmus_multicluster_tests::{FederationSpec, Load, Summary};

const REQUESTS: usize = 1_000;

fn rule(locality: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
{locality}    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 10s
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#
    )
}

const DISTRIBUTE: &str = r#"        distribute:
        - from: us-west/*
          to:
            "us-east/*": 70
            "eu-central/*": 30
"#;

const FAILOVER_PRIORITY: &str = r#"        failoverPriority:
        - topology.istio.io/network=net-eu
"#;

/// `REQUESTS` calls from productpage in us-west.
async fn measure(fed: &isthmus_multicluster_tests::Federation) -> Summary {
    let outcomes = Load::start(
        fed.load("us-west", "productpage-v1", "reviews", 150.0)
            .unwrap(),
    )
    .first(REQUESTS, Duration::from_secs(40))
    .await;
    let s = Summary::of(&outcomes);
    eprintln!("{s:#?}");
    assert_eq!(
        s.total, REQUESTS,
        "the load did not reach {REQUESTS} requests"
    );
    assert_eq!(s.failed, 0, "{:?}", s.failures);
    s
}

/// Until `n` calls in a row land in `cluster` (the new rule reached the
/// sidecar).
async fn wait_streak(fed: &isthmus_multicluster_tests::Federation, cluster: &str, n: usize) {
    let cfg = fed
        .load("us-west", "productpage-v1", "reviews", 1.0)
        .unwrap();
    let streak = std::cell::Cell::new(0);
    isthmus_multicluster_tests::wait::until(
        &format!("{n} calls in a row to land in {cluster}"),
        Duration::from_secs(30),
        || async {
            match isthmus_multicluster_tests::load::request(&cfg).await {
                Ok(l) if l.cluster == cluster => streak.set(streak.get() + 1),
                _ => streak.set(0),
            }
            if streak.get() >= n {
                Ok(())
            } else {
                Err(format!("{} in a row", streak.get()))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_and_failover_priority_change_the_split_as_configured() {
    let fed = common::start(FederationSpec::bookinfo(), "us-east")
        .await
        .unwrap();

    // Default: us-west fails over to us-east only.
    let default = measure(&fed).await;
    assert!(default.share("us-east") >= 0.95, "{:?}", default.landings);

    fed.write_config("us-west", "traffic.yaml", &rule(DISTRIBUTE))
        .unwrap();
    fed.wait_lands(
        "us-west",
        "productpage-v1",
        "reviews",
        "eu-central",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let split = measure(&fed).await;
    let (east, eu) = (split.share("us-east"), split.share("eu-central"));
    assert!((east + eu - 1.0).abs() < 1e-9, "{:?}", split.landings);
    assert!(
        (eu - 0.30).abs() <= 0.05,
        "eu-central got {:.1}% of {REQUESTS}, want 30% ± 5 ({:?})",
        eu * 100.0,
        split.landings
    );

    fed.write_config("us-west", "traffic.yaml", &rule(FAILOVER_PRIORITY))
        .unwrap();
    wait_streak(&fed, "eu-central", 20).await;
    let preferred = measure(&fed).await;
    assert!(
        preferred.share("eu-central") >= 0.95,
        "failoverPriority on net-eu: {:?}",
        preferred.landings
    );
    fed.shutdown().await;
}
