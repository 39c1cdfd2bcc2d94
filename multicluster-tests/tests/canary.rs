//! Canary across clusters: reviews v1 runs only in us-east and v2 only in
//! eu-central; us-west's VirtualService sends 90% to subset v1 and 10% to
//! v2. Over 2,000 requests through real sidecars and both east-west
//! gateways the split holds within ±3 points, with no failed request.

mod common;

use std::time::Duration;

use isthmus_multicluster_tests::{
    ClusterSpec, FederationSpec, Load, ServiceSpec, Summary, WorkloadSpec,
};

const REQUESTS: usize = 2_000;

/// The subsets, in every cluster: an exporting cluster's east-west gateway
/// only passes through SNIs of subsets its own config defines.
const SUBSETS: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

const CANARY: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews.default.svc.cluster.local
  http:
  - route:
    - destination:
        host: reviews.default.svc.cluster.local
        subset: v1
      weight: 90
    - destination:
        host: reviews.default.svc.cluster.local
        subset: v2
      weight: 10
"#;

fn spec() -> FederationSpec {
    let mut reviews = ServiceSpec::new("reviews", 9080);
    reviews.protocol = "HTTP".into();
    let mut productpage = ServiceSpec::new("productpage", 9090);
    productpage.protocol = "HTTP".into();
    productpage.export = false;
    let east = ClusterSpec::new("us-east", "us-east", "us-east-1a")
        .service(reviews.clone())
        .workload(WorkloadSpec::new("reviews", "v1"))
        .config("subsets.yaml", SUBSETS);
    let west = ClusterSpec::new("us-west", "us-west", "us-west-2a")
        .service(productpage)
        .workload(WorkloadSpec::new("productpage", "v1"))
        .config("canary.yaml", CANARY);
    let eu = ClusterSpec::new("eu-central", "eu-central", "eu-central-1a")
        .service(reviews)
        .workload(WorkloadSpec::new("reviews", "v2"))
        .config("subsets.yaml", SUBSETS);
    FederationSpec::new(vec![east, west, eu])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_across_clusters_holds_within_3_points() {
    let fed = common::start(spec(), "us-east").await.unwrap();
    // Both subsets reachable before counting (eu-central's endpoints and
    // certificates may arrive a little after us-east's).
    fed.wait_lands(
        "us-west",
        "productpage-v1",
        "reviews",
        "eu-central",
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let rate = 150.0;
    let outcomes = Load::start(
        fed.load("us-west", "productpage-v1", "reviews", rate)
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
    let v2 = s.share("eu-central");
    let v1 = s.share("us-east");
    assert!((v1 + v2 - 1.0).abs() < 1e-9, "{:?}", s.landings);
    assert!(
        (v2 - 0.10).abs() <= 0.03,
        "v2 (eu-central) got {:.1}% of {REQUESTS}, want 10% ± 3",
        v2 * 100.0
    );
    assert!(
        s.landings
            .keys()
            .all(|l| (l.cluster == "us-east") == (l.version == "v1")),
        "a subset answered from the wrong cluster: {:?}",
        s.landings
    );
    fed.shutdown().await;
}
