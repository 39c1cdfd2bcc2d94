//! The QUIC peer transport on loopback: mutual TLS, trust-domain checks,
//! frame limits, and a 3-node federation running over it.

#![allow(clippy::field_reassign_with_default)]

mod common;

use common::pki::{Ca, SERVER_NAME};
use common::{publish_one, register, WAIT};
use isthmus_federation::fixtures::key;
use isthmus_federation::testing::fast_config;
use isthmus_federation::transport::quic::{
    trust_domain_authorizer, PeerAddr, QuicConfig, QuicTransport,
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
    let (server, client) = ca.node_tls(td, id);
    let mut cfg = QuicConfig::new(id, loopback(), server, client, trust_domain_authorizer(TD));
    cfg.max_message_bytes = max;
    let metrics = Metrics::unregistered().unwrap();
    let (t, rx) = QuicTransport::start(cfg, metrics.clone()).unwrap();
    (t, rx, metrics)
}

fn msg(from: u64, to: u64, payload: usize) -> Message {
    let mut m = Message::default();
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
    assert!(
        m2.transport_refused_peers.get() > 0,
        "the refusal is counted"
    );
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
    assert!(m2.transport_refused_peers.get() > 0);
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
