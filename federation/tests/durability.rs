//! Restart from disk, crash loops, snapshot catch-up and membership changes.

mod common;

use common::{publish_one, register, WAIT};
use isthmus_federation::fixtures::key;
use isthmus_federation::testing::TestCluster;
use rand::Rng;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_federation_restarts_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut tc = TestCluster::start(dir.path(), &[1, 2, 3], |c| {
        c.snapshot_every = 20;
        c.keep_entries = 5;
        // No lease renewer runs here: keep leases out of the comparison.
        c.lease.ttl = Duration::from_secs(3600);
    })
    .await
    .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    let mut last = 0;
    for i in 0..50 {
        last = publish_one(&h, "a", i).await.unwrap();
    }
    let before = h.read_linearizable().await.unwrap();
    assert!(tc.wait_revision(&[1, 2, 3], last, WAIT).await);
    for id in [1, 2, 3] {
        tc.kill(id).await;
    }
    for id in [1, 2, 3] {
        tc.restart(id).await.unwrap();
    }
    // Each node recovers its applied state alone, before any leader exists.
    for id in [1, 2, 3] {
        assert!(
            tc.wait_revision(&[id], last, WAIT).await,
            "node {id} replays snapshot + log"
        );
    }
    let leader = tc
        .wait_leader(&[1, 2, 3], WAIT)
        .await
        .expect("leader after restart");
    let after = tc
        .handle(leader)
        .unwrap()
        .read_linearizable()
        .await
        .unwrap();
    assert_eq!(after.services, before.services);
    assert_eq!(after.clusters, before.clusters);
    assert!(after.revision >= before.revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let ids = [1, 2, 3];
    let mut tc = TestCluster::start(dir.path(), &ids, |c| {
        c.snapshot_every = 15;
        c.keep_entries = 3;
    })
    .await
    .unwrap();
    let leader = tc.wait_leader(&ids, WAIT).await.expect("leader");
    register(&tc.handle(leader).unwrap(), "a").await;
    let mut acked = BTreeSet::new();
    let mut n = 0u64;
    let mut rng = rand::rng();
    for _round in 0..20 {
        // Concurrent writes from every node while one of them is killed at a
        // random moment.
        let victim = ids[rng.random_range(0..ids.len())];
        let mut writers = Vec::new();
        for id in ids {
            let h = tc.handle(id).unwrap();
            let start = n;
            n += 5;
            writers.push(tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in start..start + 5 {
                    if publish_one(&h, "a", i).await.is_ok() {
                        ok.push(i);
                    }
                }
                ok
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        tc.kill(victim).await;
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        tc.restart(victim).await.unwrap();
    }
    let leader = tc.wait_leader(&ids, WAIT).await.expect("leader at the end");
    let view = tc
        .handle(leader)
        .unwrap()
        .read_linearizable()
        .await
        .unwrap();
    for i in &acked {
        assert!(
            view.services["a"].contains_key(&key("default", &format!("svc-{i}"))),
            "acknowledged write {i} lost"
        );
    }
    assert!(
        acked.len() > 100,
        "too few writes succeeded: {}",
        acked.len()
    );
    assert!(tc.wait_revision(&ids, view.revision, WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_during_many_writes_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut tc = TestCluster::start(dir.path(), &[1, 2, 3], |c| {
        c.snapshot_every = 200;
        c.keep_entries = 20;
    })
    .await
    .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    let down = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    tc.kill(down).await;
    let writes = 3000u64;
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < writes {
                publish_one(&h, "a", i).await.unwrap();
                i += 32;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected = h.read_linearizable().await.unwrap();
    let leader_status = h.status().await.unwrap();
    tc.restart(down).await.unwrap();
    assert!(
        tc.wait_revision(&[down], expected.revision, Duration::from_secs(30))
            .await,
        "lagging node catches up"
    );
    let got = tc.handle(down).unwrap().snapshot_stale();
    assert_eq!(got.services, expected.services);
    assert_eq!(got.services["a"].len(), writes as usize);
    // The leader compacted its log while the node was down, so only a
    // snapshot could bring it back.
    assert!(leader_status.first_index > 200, "{leader_status:?}");
    let st = tc.handle(down).unwrap().status().await.unwrap();
    assert!(
        st.snapshot_index >= leader_status.first_index - 1,
        "caught up by snapshot: {st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_change_under_write_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut tc = TestCluster::start(dir.path(), &[1, 2, 3], |c| {
        c.snapshot_every = 50;
        c.keep_entries = 10;
    })
    .await
    .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    let writer = {
        let h = h.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..150u64 {
                if publish_one(&h, "a", i).await.is_ok() {
                    acked.push(i);
                }
            }
            acked
        })
    };
    tc.start_joiner(4, |_| {}).await.unwrap();
    h.add_learner(4, "mem:4").await.unwrap();
    h.add_voter(4, "mem:4").await.unwrap();
    let status = h.status().await.unwrap();
    assert_eq!(status.voters, vec![1, 2, 3, 4]);
    let victim = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    h.remove_node(victim).await.unwrap();
    tc.kill(victim).await;
    let acked = writer.await.unwrap();
    let status = h.status().await.unwrap();
    let mut voters = status.voters.clone();
    voters.sort();
    let expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != victim).collect();
    assert_eq!(voters, expected);
    let view = h.read_linearizable().await.unwrap();
    assert!(
        tc.wait_revision(&[4], view.revision, WAIT).await,
        "new member catches up"
    );
    let v4 = tc.handle(4).unwrap().snapshot_stale();
    assert_eq!(
        v4.members.get(&4).map(String::as_str),
        Some("mem:4"),
        "run-time members' addresses are replicated"
    );
    for i in acked {
        assert!(v4.services["a"].contains_key(&key("default", &format!("svc-{i}"))));
    }
    // The new voter counts for the quorum: with the removed node gone and
    // one more stopped, writes still need node 4.
    let other = expected
        .iter()
        .copied()
        .find(|i| *i != leader && *i != 4)
        .unwrap();
    tc.kill(other).await;
    publish_one(&h, "a", 9999)
        .await
        .expect("leader + node 4 form a quorum of 3");
}
