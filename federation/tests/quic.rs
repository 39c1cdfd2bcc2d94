//! The QUIC peer transport on loopback: mutual TLS, trust-domain checks,
//! frame limits, and a 3-node federation running over it.

#![allow(clippy::field_reassign_with_default)]

mod common;

use common::pki::{Ca, SERVER_NAME};
use common::{publish_one, register, WAIT};
use isthmus_federation::fixtures::key;
use isthmus_federation::testing::fast_config;
use isthmus_federation::transport::quic::{
    node_identity_authorizer, trust_domain_authorizer, PeerAddr, PeerAuthorizer, QuicConfig,
    QuicTransport,
};
use isthmus_federation::{Metrics, Node, Transport};
use raft::eraftpb::{Entry, Message};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const TD: &str = "federation.test";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(
    ca: &Ca,
    td: &str,
    id: u64,
    max: usize,
) -> (Arc<QuicTransport>, mpsc::Receiver<Message>, Metrics) {
    start_as(ca, td, id, id, trust_domain_authorizer(TD), max)
}

/// The SPIFFE id the test PKI gives node `n`.
fn node_spiffe(n: u64) -> String {
    format!("spiffe://{TD}/federation/node-{n}")
}

fn bound_authorizer() -> PeerAuthorizer {
    node_identity_authorizer(TD, |n| (n < 100).then(|| node_spiffe(n)))
}

/// A transport speaking as node `id` with the certificate of node `cert_of`.
fn start_as(
    ca: &Ca,
    td: &str,
    id: u64,
    cert_of: u64,
    authorize: PeerAuthorizer,
    max: usize,
) -> (Arc<QuicTransport>, mpsc::Receiver<Message>, Metrics) {
    let (server, client) = ca.node_tls(td, cert_of);
    let mut cfg = QuicConfig::new(id, loopback(), server, client, authorize);
    cfg.max_message_bytes = max;
    let metrics = Metrics::unregistered().unwrap();
    let (t, rx) = QuicTransport::start(cfg, metrics.clone()).unwrap();
    (t, rx, metrics)
}

fn msg(from: u64, to: u64, payload: usize) -> Message {
    let mut m = Message::default();
    // The default type (MsgHup) is node-local and refused from the network.
    m.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    m.from = from;
    m.to = to;
    m.term = 7;
    if payload > 0 {
        let mut e = Entry::default();
        e.data = vec![7u8; payload].into();
        m.mut_entries().push(e);
    }
    m
}

fn peer(t: &QuicTransport) -> PeerAddr {
    PeerAddr {
        addr: t.local_addr().unwrap(),
        server_name: SERVER_NAME.into(),
    }
}

/// Sends `m` repeatedly until something arrives (the first messages may be
/// dropped while the connection is being set up).
async fn send_until_received(
    from: &QuicTransport,
    m: Message,
    rx: &mut mpsc::Receiver<Message>,
) -> Option<Message> {
    send_for(from, m, rx, WAIT).await
}

async fn send_for(
    from: &QuicTransport,
    m: Message,
    rx: &mut mpsc::Receiver<Message>,
    wait: Duration,
) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        from.send(m.clone());
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            return Some(got);
        }
    }
    None
}

#[tokio::test]
async fn delivers_between_members_of_the_trust_domain() {
    let ca = Ca::new();
    let (t1, _rx1, _) = start(&ca, TD, 1, 1 << 20);
    let (t2, mut rx2, _) = start(&ca, TD, 2, 1 << 20);
    t1.add_peer(2, peer(&t2));
    let got = send_until_received(&t1, msg(1, 2, 10), &mut rx2)
        .await
        .expect("delivered");
    assert_eq!((got.from, got.to, got.term), (1, 2, 7));
    assert_eq!(got.get_entries()[0].data.len(), 10);
}

#[tokio::test]
async fn refuses_peer_of_another_trust_domain() {
    let ca = Ca::new();
    let (t1, _rx1, _) = start(&ca, "intruder.test", 1, 1 << 20);
    let (t2, mut rx2, m2) = start(&ca, TD, 2, 1 << 20);
    t1.add_peer(2, peer(&t2));
    let got = send_for(&t1, msg(1, 2, 0), &mut rx2, Duration::from_millis(1500)).await;
    assert!(
        got.is_none(),
        "a peer of another trust domain must not be heard"
    );
    assert!(m2.refused_peers_total() > 0, "the refusal is counted");
}

#[tokio::test]
async fn refuses_peer_of_another_ca() {
    let ca = Ca::new();
    let other = Ca::new();
    let (t1, _rx1, _) = start(&other, TD, 1, 1 << 20);
    let (t2, mut rx2, m2) = start(&ca, TD, 2, 1 << 20);
    t1.add_peer(2, peer(&t2));
    t1.send(msg(1, 2, 0));
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), rx2.recv())
            .await
            .is_err()
    );
    assert!(m2.refused_peers_total() > 0);
}

#[tokio::test]
async fn oversized_frames_are_rejected_and_counted() {
    let ca = Ca::new();
    let (t1, _rx1, _) = start(&ca, TD, 1, 1 << 20);
    let (t2, mut rx2, m2) = start(&ca, TD, 2, 4096);
    t1.add_peer(2, peer(&t2));
    // Establish the connection with small messages first.
    send_until_received(&t1, msg(1, 2, 0), &mut rx2)
        .await
        .expect("small frames pass");
    t1.send(msg(1, 2, 100_000));
    let deadline = tokio::time::Instant::now() + WAIT;
    while m2.transport_malformed.get() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m2.transport_malformed.get(), 1);
    // The sender reconnects and later small messages still get through.
    assert!(send_until_received(&t1, msg(1, 2, 0), &mut rx2)
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_federation_over_quic() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let ids = [1u64, 2, 3];
    let mut transports = HashMap::new();
    let mut inbounds = HashMap::new();
    for id in ids {
        let (t, rx, _) = start(&ca, TD, id, 64 << 20);
        transports.insert(id, t);
        inbounds.insert(id, rx);
    }
    for a in ids {
        for b in ids {
            if a != b {
                transports[&a].add_peer(b, peer(&transports[&b]));
            }
        }
    }
    let mut nodes = HashMap::new();
    for id in ids {
        let cfg = fast_config(id, dir.path().join(format!("n{id}")), ids.to_vec());
        let t: Arc<dyn Transport> = transports[&id].clone();
        let node = Node::start(
            cfg,
            t,
            inbounds.remove(&id).unwrap(),
            Metrics::unregistered().unwrap(),
        )
        .await
        .unwrap();
        nodes.insert(id, node);
    }
    let h1 = nodes[&1].handle();
    register(&h1, "a").await;
    let mut rev = 0;
    for i in 0..20 {
        rev = publish_one(&nodes[&(1 + i % 3)].handle(), "a", i)
            .await
            .unwrap();
    }
    for id in ids {
        let mut view = nodes[&id].handle().watch_snapshot();
        tokio::time::timeout(WAIT, view.wait_for(|v| v.revision >= rev))
            .await
            .unwrap()
            .unwrap();
        let v = nodes[&id].handle().snapshot_stale();
        assert_eq!(v.services["a"].len(), 20);
        assert!(v.services["a"].contains_key(&key("default", "svc-19")));
    }
    for (_, t) in transports {
        t.close();
    }
}

#[tokio::test]
async fn a_connection_cannot_speak_for_another_node() {
    let ca = Ca::new();
    let (t1, _rx1, _) = start(&ca, TD, 1, 1 << 20);
    let (t2, mut rx2, m2) = start(&ca, TD, 2, 1 << 20);
    t1.add_peer(2, peer(&t2));
    send_until_received(&t1, msg(1, 2, 0), &mut rx2)
        .await
        .expect("own id passes");
    t1.send(msg(3, 2, 0));
    let deadline = tokio::time::Instant::now() + WAIT;
    while m2.transport_malformed.get() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m2.transport_malformed.get(), 1);
    while let Ok(m) = rx2.try_recv() {
        assert_eq!(m.from, 1, "a spoofed sender id was delivered");
    }
}

#[tokio::test]
async fn a_dead_peer_does_not_stall_the_others() {
    let ca = Ca::new();
    let (t1, _rx1, m1) = start(&ca, TD, 1, 1 << 20);
    let (t2, mut rx2, _) = start(&ca, TD, 2, 1 << 20);
    // Peer 3 is a UDP port nobody answers on.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    t1.add_peer(
        3,
        PeerAddr {
            addr: dead.local_addr().unwrap(),
            server_name: SERVER_NAME.into(),
        },
    );
    t1.add_peer(2, peer(&t2));
    // Flood the dead peer far beyond its queue, then talk to the live one.
    for _ in 0..5000 {
        t1.send(msg(1, 3, 100));
    }
    let got = send_until_received(&t1, msg(1, 2, 0), &mut rx2).await;
    assert!(got.is_some(), "the live peer is still served");
    let dropped: u64 = ["peer_queue_full", "peer_unreachable"]
        .iter()
        .map(|r| m1.transport_dropped.with_label_values(&[r]).get())
        .sum();
    assert!(
        dropped > 0,
        "messages to the dead peer are dropped and counted"
    );
}

#[tokio::test]
async fn a_member_cannot_claim_another_members_node_id() {
    let ca = Ca::new();
    // Node 1 holds node 5's (valid, same trust domain) certificate.
    let (t1, _rx1, _) = start_as(&ca, TD, 1, 5, bound_authorizer(), 1 << 20);
    let (t2, mut rx2, m2) = start_as(&ca, TD, 2, 2, bound_authorizer(), 1 << 20);
    t1.add_peer(2, peer(&t2));
    let got = send_for(&t1, msg(1, 2, 0), &mut rx2, Duration::from_millis(1500)).await;
    assert!(
        got.is_none(),
        "node 5's certificate must not speak as node 1"
    );
    assert!(
        m2.transport_refused_peers
            .with_label_values(&["identity"])
            .get()
            > 0,
        "the refusal is counted as an identity mismatch"
    );
    // The rightful holder gets through.
    let (t3, _rx3, _) = start_as(&ca, TD, 3, 3, bound_authorizer(), 1 << 20);
    t3.add_peer(2, peer(&t2));
    let got = send_until_received(&t3, msg(3, 2, 0), &mut rx2)
        .await
        .expect("node 3 with its own certificate is heard");
    assert_eq!(got.from, 3);
}

#[tokio::test]
async fn an_address_pointing_at_the_wrong_member_is_not_used() {
    let ca = Ca::new();
    let (t1, _rx1, m1) = start_as(&ca, TD, 1, 1, bound_authorizer(), 1 << 20);
    let (t3, mut rx3, _) = start_as(&ca, TD, 3, 3, bound_authorizer(), 1 << 20);
    // Node 1 believes node 2 lives where node 3 listens.
    t1.add_peer(2, peer(&t3));
    let mut m = msg(1, 2, 0);
    m.to = 2;
    let got = send_for(&t1, m, &mut rx3, Duration::from_millis(1500)).await;
    assert!(got.is_none(), "nothing meant for node 2 reaches node 3");
    assert!(
        m1.transport_refused_peers
            .with_label_values(&["outbound_identity"])
            .get()
            > 0
    );
}

#[tokio::test]
async fn forged_local_messages_are_dropped() {
    let ca = Ca::new();
    let (t1, _rx1, _) = start(&ca, TD, 1, 1 << 20);
    let (t2, mut rx2, m2) = start(&ca, TD, 2, 1 << 20);
    t1.add_peer(2, peer(&t2));
    send_until_received(&t1, msg(1, 2, 0), &mut rx2)
        .await
        .expect("connected");
    let mut forged = msg(1, 2, 0);
    forged.set_msg_type(raft::eraftpb::MessageType::MsgSnapStatus);
    t1.send(forged);
    let deadline = tokio::time::Instant::now() + WAIT;
    while m2.transport_malformed.get() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m2.transport_malformed.get(), 1);
    while let Ok(m) = rx2.try_recv() {
        assert_ne!(m.get_msg_type(), raft::eraftpb::MessageType::MsgSnapStatus);
    }
}

/// A snapshot message as the leader sends it, with `payload` bytes of data.
fn snapshot_msg(from: u64, to: u64, payload: usize) -> Message {
    let mut m = msg(from, to, 0);
    m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    let snap = m.mut_snapshot();
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 2;
    snap.data = vec![9u8; payload].into();
    m
}

#[tokio::test]
async fn snapshots_travel_on_their_own_stream_and_are_reported() {
    let ca = Ca::new();
    let (t1, mut rx1, m1) = start(&ca, TD, 1, 64 << 10);
    let (t2, mut rx2, _) = start(&ca, TD, 2, 64 << 10);
    t1.add_peer(2, peer(&t2));
    send_until_received(&t1, msg(1, 2, 0), &mut rx2)
        .await
        .expect("connected");
    // Far over the message frame limit (64 KiB), under the snapshot limit.
    t1.send(snapshot_msg(1, 2, 5 << 20));
    let got = tokio::time::timeout(WAIT, rx2.recv())
        .await
        .expect("snapshot arrives")
        .unwrap();
    assert_eq!(got.get_msg_type(), raft::eraftpb::MessageType::MsgSnapshot);
    assert_eq!(got.get_snapshot().data.len(), 5 << 20);
    let report = tokio::time::timeout(WAIT, rx1.recv())
        .await
        .expect("delivery is reported to the sending node")
        .unwrap();
    assert_eq!(
        report.get_msg_type(),
        raft::eraftpb::MessageType::MsgSnapStatus
    );
    assert_eq!((report.from, report.to, report.reject), (2, 1, false));
    assert!(m1.snapshot_bytes_sent.get() >= 5 << 20);
}

#[tokio::test]
async fn oversized_snapshots_are_refused_and_reported_failed() {
    let ca = Ca::new();
    let (server, client) = ca.node_tls(TD, 1);
    let mut cfg = QuicConfig::new(1, loopback(), server, client, trust_domain_authorizer(TD));
    cfg.max_snapshot_bytes = 1 << 30;
    let m1 = Metrics::unregistered().unwrap();
    let (t1, mut rx1) = QuicTransport::start(cfg, m1.clone()).unwrap();
    let (server, client) = ca.node_tls(TD, 2);
    let mut cfg = QuicConfig::new(2, loopback(), server, client, trust_domain_authorizer(TD));
    cfg.max_snapshot_bytes = 1 << 20;
    let (t2, mut rx2) = QuicTransport::start(cfg, Metrics::unregistered().unwrap()).unwrap();
    t1.add_peer(2, peer(&t2));
    send_until_received(&t1, msg(1, 2, 0), &mut rx2)
        .await
        .expect("connected");
    t1.send(snapshot_msg(1, 2, 2 << 20));
    let report = tokio::time::timeout(WAIT, rx1.recv())
        .await
        .expect("the failure is reported")
        .unwrap();
    assert_eq!(
        report.get_msg_type(),
        raft::eraftpb::MessageType::MsgSnapStatus
    );
    assert!(report.reject, "an undelivered snapshot is reported failed");
    assert_eq!(m1.snapshots_failed.get(), 1);
    while let Ok(m) = rx2.try_recv() {
        assert_ne!(m.get_msg_type(), raft::eraftpb::MessageType::MsgSnapshot);
    }
}
