//! A service that exists only in another cluster, on a port with no name
//! and no protocol, is sniffed by the calling sidecar as a local one would
//! be: reviews runs only in us-east with an unnamed port; us-west knows it
//! only from the federation registry, and its VirtualService rewrites the
//! path of HTTP calls to reviews. The rewrite is applied (reviews sees the
//! new path), which needs us-west's sidecar to treat the port as HTTP; a
//! port that arrived as TCP would pass the request through untouched.

mod common;

use isthmus_multicluster_tests::load::request_answer;
use isthmus_multicluster_tests::{ClusterSpec, FederationSpec, ServiceSpec, WorkloadSpec};

const REWRITE: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews.default.svc.cluster.local
  http:
  - match:
    - uri:
        prefix: /old
    rewrite:
      uri: /new
    route:
    - destination:
        host: reviews.default.svc.cluster.local
  - route:
    - destination:
        host: reviews.default.svc.cluster.local
"#;

fn spec() -> FederationSpec {
    let mut reviews = ServiceSpec::new("reviews", 9080);
    reviews.protocol = String::new();
    let mut productpage = ServiceSpec::new("productpage", 9090);
    productpage.protocol = "HTTP".into();
    productpage.export = false;
    let east = ClusterSpec::new("us-east", "us-east", "us-east-1a")
        .service(reviews)
        .workload(WorkloadSpec::new("reviews", "v1"));
    let west = ClusterSpec::new("us-west", "us-west", "us-west-2a")
        .service(productpage)
        .workload(WorkloadSpec::new("productpage", "v1"))
        .config("rewrite.yaml", REWRITE);
    FederationSpec::new(vec![east, west])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_only_unnamed_port_gets_http_routing() {
    let fed = common::start(spec(), "us-east").await.unwrap();
    let mut cfg = fed
        .load("us-west", "productpage-v1", "reviews", 1.0)
        .unwrap();
    cfg.path = "/old/page".into();
    let answer = request_answer(&cfg).await.unwrap();
    assert_eq!(answer.identity.cluster, "us-east");
    assert_eq!(
        answer.path, "/new/page",
        "us-west's sidecar must route HTTP on the sniffed remote port"
    );
    // Without a match the request passes unchanged, still over HTTP.
    cfg.path = "/other".into();
    let answer = request_answer(&cfg).await.unwrap();
    assert_eq!(answer.path, "/other");
    fed.shutdown().await;
}
