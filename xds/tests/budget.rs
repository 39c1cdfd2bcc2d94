//! Memory at scale: responses are built only when the transport asks for
//! them, within a server-wide budget; big delta updates travel in several
//! small responses.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use isthmus_xds::{SyncState, TypeUrl, XdsConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// `n` clusters of about `pad` bytes each.
fn big_model(n: usize, pad: usize) -> Model {
    let mut m = Model::default();
    for i in 0..n {
        m.clusters.insert(format!("c{i:03}"), 1);
    }
    m.pad = pad;
    m
}

/// A delta ADS stream subscribed to every cluster whose client never reads
/// its responses. Its HTTP/2 windows are small, so the server's side of the
/// stream fills up after a few tens of KiB.
struct Stuck {
    _tx: mpsc::Sender<DeltaDiscoveryRequest>,
    _rx: Streaming<DeltaDiscoveryResponse>,
}

async fn stuck_client(addr: SocketAddr, pod: &str) -> Stuck {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(16 << 10)
        .initial_connection_window_size(16 << 10)
        .connect()
        .await
        .unwrap();
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let mut first = delta_sub(CDS, &["*"], &[]);
    first.node = Some(sidecar(pod));
    tx.send(first).await.unwrap();
    let rx = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Stuck { _tx: tx, _rx: rx }
}

async fn wait_metric(server: &TestServer, what: &str, f: impl Fn(&TestServer) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f(server) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_never_hold_more_than_the_budget() {
    const BUDGET: usize = 64 << 10;
    const STREAMS: usize = 200;
    // 400 clusters of 2 KB: 800 KB of CDS per stream, far more than the
    // stuck clients' windows and the server's HTTP/2 send buffers take.
    let generator = TestGenerator::new(big_model(400, 2_000));
    let config = XdsConfig {
        response_budget_bytes: BUDGET,
        // Longer than the test: stuck streams keep their share.
        response_stall: Duration::from_secs(3600),
        delta_response_bytes: 16 << 10,
        ..fast_config()
    };
    let server = start(generator.clone(), config).await;
    let mut stuck = Vec::new();
    for i in 0..STREAMS {
        stuck.push(stuck_client(server.addr, &format!("stuck{i}")).await);
    }
    // Every stream has queued its CDS update...
    server
        .wait_status("every stream to queue its CDS update", |s| {
            s.len() == STREAMS
                && s.iter().all(|p| {
                    p.types
                        .get(&TypeUrl::Cluster)
                        .is_some_and(|t| t.state == SyncState::Sent)
                })
        })
        .await;
    // ...and streams are waiting for the budget, which the stuck ones hold.
    wait_metric(&server, "a stream waiting for the budget", |s| {
        s.metric("isthmus_xds_response_budget_waits_total", None) >= 1.0
    })
    .await;
    let max = server.metric("isthmus_xds_response_bytes_in_flight_max", None);
    assert!(
        max > 0.0 && max <= BUDGET as f64,
        "at most {BUDGET} bytes of built responses at once, saw {max}"
    );
    let in_flight = server.metric("isthmus_xds_responses_in_flight", None);
    assert!(
        in_flight >= 1.0 && in_flight <= (BUDGET / (16 << 10)) as f64 + 1.0,
        "{in_flight} responses built and not handed over"
    );
    // Gone clients give their share back.
    drop(stuck);
    wait_metric(&server, "the stuck streams' shares back", |s| {
        s.metric("isthmus_xds_response_bytes_in_flight", None) == 0.0
    })
    .await;
}

/// Receives delta CDS responses until every name in `want` arrived; returns
/// the responses.
async fn recv_all(c: &mut DeltaClient, want: &BTreeSet<String>) -> Vec<DeltaDiscoveryResponse> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    while &seen != want {
        let r = c.recv().await;
        assert_eq!(r.type_url, CDS);
        for name in delta_names(&r) {
            assert!(seen.insert(name.clone()), "{name} sent twice");
        }
        out.push(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gives_its_budget_back() {
    let model = big_model(400, 2_000);
    let want: BTreeSet<String> = model.clusters.keys().cloned().collect();
    let generator = TestGenerator::new(model);
    let config = XdsConfig {
        // One response at a time, server-wide.
        response_budget_bytes: 16 << 10,
        response_stall: Duration::from_millis(50),
        delta_response_bytes: 16 << 10,
        ..fast_config()
    };
    let server = start(generator.clone(), config).await;
    let mut stuck = Vec::new();
    for i in 0..10 {
        stuck.push(stuck_client(server.addr, &format!("stuck{i}")).await);
    }
    wait_metric(&server, "a stalled response", |s| {
        s.metric("isthmus_xds_response_stalls_total", None) >= 1.0
    })
    .await;
    // A client that reads gets everything despite the stuck ones.
    let mut c =
        DeltaClient::connect(server.addr, sidecar("reader"), delta_sub(CDS, &["*"], &[])).await;
    let responses = recv_all(&mut c, &want).await;
    for r in &responses {
        c.ack(r).await;
    }
    server
        .wait_status("the reader in sync", |s| {
            s.iter().any(|p| {
                p.proxy.name == "reader" && p.types[&TypeUrl::Cluster].state == SyncState::Synced
            })
        })
        .await;
    drop(stuck);
}

#[tokio::test]
async fn a_big_delta_update_is_split_and_acked_as_a_whole() {
    let model = big_model(40, 1_000);
    let want: BTreeSet<String> = model.clusters.keys().cloned().collect();
    let generator = TestGenerator::new(model);
    let config = XdsConfig {
        delta_response_bytes: 4 << 10,
        ..fast_config()
    };
    let server = start(generator.clone(), config).await;
    let mut c = DeltaClient::connect(server.addr, sidecar("a"), delta_sub(CDS, &["*"], &[])).await;
    let responses = recv_all(&mut c, &want).await;
    assert!(
        responses.len() >= 8,
        "40 KB in 4 KB responses, got {}",
        responses.len()
    );
    let nonces: BTreeSet<_> = responses.iter().map(|r| r.nonce.clone()).collect();
    assert_eq!(nonces.len(), responses.len(), "one nonce per response");
    for r in &responses {
        c.ack(r).await;
    }
    server
        .wait_status("CDS synced once the last part is ACKed", |s| {
            s.first()
                .is_some_and(|p| p.types[&TypeUrl::Cluster].state == SyncState::Synced)
        })
        .await;

    // Every cluster changes: a NACK of one part marks the update rejected,
    // even though the parts after it are ACKed.
    generator.update(|m| {
        for rev in m.clusters.values_mut() {
            *rev = 2;
        }
    });
    server.push_full(2);
    let responses = recv_all(&mut c, &want).await;
    assert!(responses.len() >= 8);
    let rejected = &responses[1];
    for (i, r) in responses.iter().enumerate() {
        if i == 1 {
            c.send(DeltaDiscoveryRequest {
                type_url: CDS.into(),
                response_nonce: r.nonce.clone(),
                error_detail: Some(RpcStatus {
                    code: 3,
                    message: "bad cluster".into(),
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await;
        } else {
            c.ack(r).await;
        }
    }
    // A later request with an answer shows the ACKs above were processed.
    c.send(delta_sub(EDS, &["c000"], &[])).await;
    c.recv().await;
    let status = server.xds.status();
    let cds = &status[0].types[&TypeUrl::Cluster];
    assert_eq!(cds.state, SyncState::Nacked);
    let nack = cds.last_nack.as_ref().unwrap();
    assert_eq!(nack.nonce, rejected.nonce);
    assert_eq!(nack.message, "bad cluster");
}
