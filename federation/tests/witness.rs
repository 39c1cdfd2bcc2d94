//! The witness: votes and stores the log, applies nothing, refuses registry
//! requests, never ships its (empty) snapshots, and when it alone holds the
//! newest entries it leads just long enough to hand them to a replica.

mod common;

use common::{publish_one, register, WAIT};
use isthmus_federation::fixtures::key;
use isthmus_federation::testing::TestCluster;
use isthmus_federation::{FederationError, Role};
use std::time::Duration;

const W: u64 = 3;

fn tune(c: &mut isthmus_federation::NodeConfig) {
    c.witness = c.id == W;
    c.snapshot_every = 10;
    c.keep_entries = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_keeps_the_log_but_no_registry() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut tc = TestCluster::start(dir.path(), &[1, 2, W], tune)
        .await
        .unwrap();
    let leader = tc.wait_leader(&[1, 2, W], WAIT).await.expect("leader");
    assert_ne!(
        leader, W,
        "equal logs: replicas refuse the witness's candidacy"
    );
    let h = tc.handle(1).unwrap();
    register(&h, "a").await;
    for i in 0..30 {
        publish_one(&h, "a", i).await.unwrap();
    }
    let w = tc.handle(W).unwrap();
    let status = w.status().await.unwrap();
    assert!(
        status.snapshot_index > 0,
        "the witness compacts its log: {status}"
    );
    assert!(w.snapshot_stale().services.is_empty());
    assert!(matches!(
        publish_one(&w, "a", 99).await,
        Err(FederationError::Witness { node: W })
    ));
    assert!(matches!(
        w.read_linearizable().await,
        Err(FederationError::Witness { .. })
    ));
    // Its snapshot file carries membership only.
    let snap = std::fs::read(tc.data_dir(W).join("snap/current.snap")).unwrap();
    let text = String::from_utf8_lossy(&snap);
    assert!(
        !text.contains("svc-"),
        "registry data in the witness's snapshot"
    );
    // A witness restarts from its own data; a replica refuses that data.
    tc.kill(W).await;
    tc.restart(W).await.unwrap();
    let rev = h.read_linearizable().await.unwrap().revision;
    publish_one(&h, "a", 100).await.unwrap();
    assert!(rev > 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let hw = tc.handle(W).unwrap().status().await.unwrap();
        let h1 = h.status().await.unwrap();
        if hw.commit >= h1.commit {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "witness follows the log after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tc.kill(W).await;
    let copy = dir.path().join("witness-copy");
    std::fs::rename(tc.data_dir(W), &copy).unwrap();
    let mut as_replica = isthmus_federation::testing::fast_config(9, copy, vec![]);
    as_replica.witness = false;
    let net = isthmus_federation::transport::mem::MemNetwork::new();
    let (t, rx) = net.join(9);
    let err = isthmus_federation::Node::start(
        as_replica,
        t,
        rx,
        isthmus_federation::Metrics::unregistered().unwrap(),
    )
    .await
    .err()
    .expect("a replica must not start from a witness's data");
    assert!(err.to_string().contains("witness"), "{err}");
}

/// The leader replicates an entry to the witness only, then dies: the other
/// replica is behind, so the witness must win the election, bring the
/// replica up to date from its log and hand leadership over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_with_the_newest_entries_hands_them_to_a_replica() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut tc = TestCluster::start(dir.path(), &[1, 2, W], |c| c.witness = c.id == W)
        .await
        .unwrap();
    let leader = tc.wait_leader(&[1, 2, W], WAIT).await.expect("leader");
    let other = if leader == 1 { 2 } else { 1 };
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    publish_one(&h, "a", 1).await.unwrap();
    // Cut the two replicas apart: the leader commits with the witness only.
    tc.net.isolate(other, &[leader]);
    let acked = publish_one(&h, "a", 2)
        .await
        .expect("leader + witness commit");
    tc.kill(leader).await;
    tc.net.heal();
    let new_leader = tc
        .wait_leader(&[other, W], WAIT)
        .await
        .expect("a leader among the replica and the witness");
    // Whoever won, leadership ends on the replica, which has the write.
    let deadline = tokio::time::Instant::now() + WAIT;
    let h2 = tc.handle(other).unwrap();
    loop {
        if h2.status().await.unwrap().role == Role::Leader {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leadership never reached the replica (first leader: {new_leader})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = h2.read_linearizable().await.unwrap();
    assert!(view.revision >= acked);
    assert!(view.services["a"].contains_key(&key("default", "svc-2")));
    publish_one(&h2, "a", 3).await.expect("writes continue");
}

mod over_quic {
    use super::common::pki::{Ca, SERVER_NAME};
    use super::common::{publish_one, register, WAIT};
    use isthmus_federation::testing::fast_config;
    use isthmus_federation::transport::quic::{
        node_identity_authorizer, PeerAddr, QuicConfig, QuicTransport,
    };
    use isthmus_federation::{
        run_witness, Metrics, Node, NodeConfig, Transport, Witness, WitnessConfig,
    };
    use std::sync::Arc;

    const TD: &str = "federation.test";

    fn quic_config(ca: &Ca, id: u64) -> QuicConfig {
        let (server, client) = ca.node_tls(TD, id);
        let authorize =
            node_identity_authorizer(TD, |n| Some(format!("spiffe://{TD}/federation/node-{n}")));
        QuicConfig::new(
            id,
            "127.0.0.1:0".parse().unwrap(),
            server,
            client,
            authorize,
        )
    }

    fn addr(a: std::net::SocketAddr) -> PeerAddr {
        PeerAddr {
            addr: a,
            server_name: SERVER_NAME.into(),
        }
    }

    /// Two replicas and a witness process role over QUIC: losing a replica
    /// keeps the federation writable, and the witness holds no registry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_and_a_quic_witness() {
        let ca = Ca::new();
        let dir = tempfile::tempdir().unwrap();
        let voters = vec![1, 2, 3];
        let mut replicas = Vec::new();
        for id in [1u64, 2] {
            let (t, rx) =
                QuicTransport::start(quic_config(&ca, id), Metrics::unregistered().unwrap())
                    .unwrap();
            replicas.push((id, t, rx));
        }
        let mut wq = quic_config(&ca, 3);
        for (id, t, _) in &replicas {
            wq.peers.insert(*id, addr(t.local_addr().unwrap()));
        }
        let mut wcfg = NodeConfig::witness(3, dir.path().join("w"), voters.clone());
        let fast = fast_config(3, dir.path().join("w"), voters.clone());
        wcfg.tick_interval = fast.tick_interval;
        wcfg.request_timeout = fast.request_timeout;
        let witness = Witness::start(WitnessConfig {
            node: wcfg,
            quic: wq,
            metrics: Metrics::unregistered().unwrap(),
        })
        .await
        .unwrap();
        let waddr = witness.local_addr().unwrap();
        let mut nodes = Vec::new();
        for (id, t, rx) in replicas.drain(..) {
            t.add_peer(3, addr(waddr));
            let other = 3 - id;
            nodes.push((id, t, rx, other));
        }
        let addrs: Vec<_> = nodes
            .iter()
            .map(|(id, t, _, _)| (*id, t.local_addr().unwrap()))
            .collect();
        let mut running = Vec::new();
        for (id, t, rx, other) in nodes {
            let oaddr = addrs.iter().find(|(i, _)| *i == other).unwrap().1;
            t.add_peer(other, addr(oaddr));
            let dyn_t: Arc<dyn Transport> = t.clone();
            let node = Node::start(
                fast_config(id, dir.path().join(format!("r{id}")), voters.clone()),
                dyn_t,
                rx,
                Metrics::unregistered().unwrap(),
            )
            .await
            .unwrap();
            running.push((id, t, node));
        }
        let h1 = running[0].2.handle();
        register(&h1, "a").await;
        publish_one(&h1, "a", 1).await.unwrap();
        // Lose replica 2: replica 1 and the witness keep a quorum.
        let (_, t2, n2) = running.pop().unwrap();
        n2.stop().await;
        t2.close();
        let deadline = tokio::time::Instant::now() + WAIT;
        let rev = loop {
            match publish_one(&h1, "a", 2).await {
                Ok(r) => break r,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("retrying: {e}")
                }
                Err(e) => panic!("writes with the witness: {e}"),
            }
        };
        assert!(rev > 0);
        let ws = witness.status().await.unwrap();
        assert!(ws.commit >= 3, "{ws}");
        assert!(witness.handle().snapshot_stale().services.is_empty());
        witness.stop().await;
        for (_, t, n) in running {
            n.stop().await;
            t.close();
        }
    }

    #[tokio::test]
    async fn run_witness_runs_until_shutdown() {
        let ca = Ca::new();
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = WitnessConfig {
            node: NodeConfig::witness(3, dir.path().join("w"), vec![1, 2, 3]),
            quic: quic_config(&ca, 3),
            metrics: Metrics::unregistered().unwrap(),
        };
        let task = tokio::spawn(run_witness(cfg, async move {
            let _ = rx.await;
        }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!task.is_finished(), "the witness keeps running");
        tx.send(()).unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("stops on shutdown")
            .unwrap()
            .unwrap();
        // A mismatched transport id is a configuration error.
        let bad = WitnessConfig {
            node: NodeConfig::witness(4, dir.path().join("w2"), vec![1, 2, 4]),
            quic: quic_config(&ca, 5),
            metrics: Metrics::unregistered().unwrap(),
        };
        assert!(run_witness(bad, async {}).await.is_err());
    }
}
