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
    let mut tc = TestCluster::start(dir.path(), &[1, 2, W], tune).await.unwrap();
    let leader = tc.wait_leader(&[1, 2, W], WAIT).await.expect("leader");
    assert_ne!(leader, W, "equal logs: replicas refuse the witness's candidacy");
    let h = tc.handle(1).unwrap();
    register(&h, "a").await;
    for i in 0..30 {
        publish_one(&h, "a", i).await.unwrap();
    }
    let w = tc.handle(W).unwrap();
    let status = w.status().await.unwrap();
    assert!(status.snapshot_index > 0, "the witness compacts its log: {status}");
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
    assert!(!text.contains("svc-"), "registry data in the witness's snapshot");
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
        assert!(tokio::time::Instant::now() < deadline, "witness follows the log after restart");
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
    let acked = publish_one(&h, "a", 2).await.expect("leader + witness commit");
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
