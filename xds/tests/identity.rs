//! Node identity on streams, and the per-type services.

mod common;

use common::*;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test]
async fn malformed_node_ids_are_refused_with_invalid_argument() {
    let server = start(TestGenerator::new(Model::basic()), fast_config()).await;
    let err = SotwClient::connect(server.addr, node("not-an-istio-id"), req(CDS, &[], "", ""))
        .await
        .err()
        .expect("a malformed node id must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("TYPE~IP~POD.NS"),
        "{}",
        err.message()
    );
    assert_eq!(
        server.metric("isthmus_xds_rejected_streams_total", Some("bad_node")),
        1.0
    );
}

#[tokio::test]
async fn ads_requests_without_type_url_end_the_stream() {
    let server = start(TestGenerator::new(Model::basic()), fast_config()).await;
    let mut c = SotwClient::connect(server.addr, sidecar("a"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    c.recv().await;
    c.send(req("", &[], "", "")).await;
    let status = tokio::time::timeout(WAIT, c.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn per_type_services_serve_their_type_only() {
    let server = start(TestGenerator::new(Model::basic()), fast_config()).await;
    let mut cds = ClusterDiscoveryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut first = req("", &[], "", "");
    first.node = Some(sidecar("a"));
    tx.send(first).await.unwrap();
    let mut stream = cds
        .stream_clusters(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.type_url, CDS);
    assert_eq!(cluster_names(&r), ["c1", "c2", "c3"]);
    // Asking the cluster service for listeners is refused.
    tx.send(req(LDS, &[], &r.version_info, &r.nonce))
        .await
        .unwrap();
    let status = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Unary fetch.
    let mut eds = EndpointDiscoveryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let mut fetch = req(EDS, &["c2"], "", "");
    fetch.node = Some(sidecar("a"));
    let r = eds.fetch_endpoints(fetch).await.unwrap().into_inner();
    assert_eq!(cla(&r), [("c2".to_owned(), 1)]);
}
