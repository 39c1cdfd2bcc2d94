//! A large registry (50,000 endpoints) reaches a member that was away while
//! the log was compacted: the leader streams the snapshot over QUIC on its
//! own stream, the transport reports delivery, and the member serves the
//! full registry afterwards.

mod common;

use common::pki::{Ca, SERVER_NAME};
use common::{register, WAIT};
use isthmus_federation::fixtures::{service, upsert};
use isthmus_federation::testing::fast_config;
use isthmus_federation::transport::quic::{
    trust_domain_authorizer, PeerAddr, QuicConfig, QuicTransport,
};
use isthmus_federation::{Metrics, Node, Transport};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const TD: &str = "federation.test";
const SERVICES: usize = 50;
const PER_SERVICE: usize = 1000;

struct Member {
    transport: Arc<QuicTransport>,
    inbound: Option<tokio::sync::mpsc::Receiver<raft::eraftpb::Message>>,
    metrics: Metrics,
}

fn member(ca: &Ca, id: u64) -> Member {
    let (server, client) = ca.node_tls(TD, id);
    let cfg = QuicConfig::new(
        id,
        "127.0.0.1:0".parse().unwrap(),
        server,
        client,
        trust_domain_authorizer(TD),
    );
    let metrics = Metrics::unregistered().unwrap();
    let (transport, inbound) = QuicTransport::start(cfg, metrics.clone()).unwrap();
    Member {
        transport,
        inbound: Some(inbound),
        metrics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_catches_up_on_a_50k_endpoint_registry_by_snapshot() {
    common::init_logs();
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let ids = [1u64, 2, 3];
    let mut members: HashMap<u64, Member> = ids.iter().map(|id| (*id, member(&ca, *id))).collect();
    for a in ids {
        for b in ids {
            if a != b {
                let addr = PeerAddr {
                    addr: members[&b].transport.local_addr().unwrap(),
                    server_name: SERVER_NAME.into(),
                };
                members[&a].transport.add_peer(b, addr);
            }
        }
    }
    let tune = |id: u64| {
        let mut c = fast_config(id, dir.path().join(format!("n{id}")), ids.to_vec());
        c.snapshot_every = 20;
        c.keep_entries = 2;
        c.request_timeout = Duration::from_secs(10);
        c
    };
    let mut nodes = HashMap::new();
    for id in [1u64, 2] {
        let m = members.get_mut(&id).unwrap();
        let t: Arc<dyn Transport> = m.transport.clone();
        let node = Node::start(tune(id), t, m.inbound.take().unwrap(), m.metrics.clone())
            .await
            .unwrap();
        nodes.insert(id, node);
    }
    let h = nodes[&1].handle();
    register(&h, "big").await;
    let mut rev = 0;
    for s in 0..SERVICES {
        let svc = service("big", &format!("svc-{s}"), PER_SERVICE, s as u64);
        rev = h.publish("big", upsert(svc)).await.unwrap();
    }
    // Enough further entries that the log no longer reaches back to the
    // start on either running member.
    for _ in 0..30 {
        h.renew_lease("big").await.unwrap();
    }
    let leader_status = h.status().await.unwrap();
    assert!(
        leader_status.first_index > 10,
        "the log was compacted: {leader_status}"
    );

    let m3 = members.get_mut(&3).unwrap();
    let t: Arc<dyn Transport> = m3.transport.clone();
    let node3 = Node::start(tune(3), t, m3.inbound.take().unwrap(), m3.metrics.clone())
        .await
        .unwrap();
    let mut view = node3.handle().watch_snapshot();
    tokio::time::timeout(WAIT * 3, view.wait_for(|v| v.revision >= rev))
        .await
        .expect("member 3 catches up")
        .unwrap();
    let v = node3.handle().snapshot_stale();
    let endpoints: usize = v.services["big"].values().map(|s| s.endpoints.len()).sum();
    assert_eq!(endpoints, SERVICES * PER_SERVICE);
    let status3 = node3.handle().status().await.unwrap();
    assert!(
        status3.snapshot_index > 0,
        "member 3 installed a snapshot: {status3}"
    );
    let sent: u64 = [1u64, 2]
        .iter()
        .map(|id| members[id].metrics.snapshot_bytes_sent.get())
        .sum();
    assert!(
        sent > 5 << 20,
        "a multi-megabyte snapshot went over QUIC ({sent} bytes)"
    );
    // Member 3 keeps up with new writes from the log afterwards.
    let rev = h.renew_lease("big").await.unwrap();
    let rev = h
        .publish("big", upsert(service("big", "after", 1, 999)))
        .await
        .unwrap()
        .max(rev);
    tokio::time::timeout(WAIT, view.wait_for(|v| v.revision >= rev))
        .await
        .expect("member 3 follows the log after the snapshot")
        .unwrap();
    for (_, m) in members {
        m.transport.close();
    }
    drop(node3);
    drop(nodes);
}
