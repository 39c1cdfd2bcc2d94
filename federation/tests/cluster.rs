//! In-process federations over the fault-injecting memory network.

mod common;

use common::{publish_one, register, WAIT};
use futures::StreamExt;
use isthmus_federation::fixtures::{key, service, upsert};
use isthmus_federation::model::Health;
use isthmus_federation::testing::TestCluster;
use isthmus_federation::transport::mem::Faults;
use isthmus_federation::{EventKind, FederationError, PublishDiff, Role, WatchError};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_watch_and_read_linearizably() {
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(dir.path(), &[1, 2, 3], |_| {})
        .await
        .unwrap();
    let leader = tc
        .wait_leader(&[1, 2, 3], WAIT)
        .await
        .expect("leader elected");
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let h = tc.handle(follower).unwrap();
    register(&h, "a").await;
    let rev = h
        .publish("a", upsert(service("a", "reviews", 3, 1)))
        .await
        .unwrap();
    // A write acknowledged on one node is visible to a linearizable read on another.
    let other = [1, 2, 3].into_iter().find(|i| *i != follower).unwrap();
    let view = tc.handle(other).unwrap().read_linearizable().await.unwrap();
    assert!(view.revision >= rev);
    assert_eq!(view.instances(&key("default", "reviews")).count(), 1);
    assert!(tc.wait_revision(&[1, 2, 3], rev, WAIT).await);

    let diff = PublishDiff {
        upserts: vec![service("a", "ratings", 1, 2)],
        removals: vec![key("default", "reviews")],
    };
    let rev2 = h.publish("a", diff).await.unwrap();
    assert_eq!(rev2, rev + 1, "one publish diff is one revision");

    // Watch from the start, then resume from the middle without gaps.
    let events: Vec<_> = tc.handle(leader).unwrap().watch(1).take(4).collect().await;
    let events: Vec<_> = events.into_iter().map(|e| e.unwrap()).collect();
    assert!(matches!(events[0].kind, EventKind::ClusterUpserted(_)));
    assert!(matches!(events[1].kind, EventKind::ServiceUpserted(_)));
    assert_eq!(events[2].revision, rev2);
    assert_eq!(events[3].revision, rev2);
    let resumed: Vec<_> = h.watch(rev2).take(2).collect().await;
    assert_eq!(
        resumed.into_iter().map(|e| e.unwrap()).collect::<Vec<_>>(),
        events[2..].to_vec()
    );

    // A watcher waiting for the future sees the next write.
    let mut live = h.watch(rev2 + 1);
    let next = tokio::spawn(async move { live.next().await });
    let rev3 = publish_one(&h, "a", 9).await.unwrap();
    let got = tokio::time::timeout(WAIT, next)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.revision, rev3);

    // Rejections are typed and change nothing.
    let err = h
        .publish("nope", upsert(service("nope", "x", 1, 1)))
        .await
        .unwrap_err();
    assert!(matches!(err, FederationError::Rejected(_)), "{err}");

    let status = tc.handle(leader).unwrap().status().await.unwrap();
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.voters, vec![1, 2, 3]);
    assert_eq!(status.peers.len(), 2);
    let text = status.to_string();
    assert!(text.contains(&format!("node {leader}: Leader")), "{text}");
    assert!(text.contains("voters: [1, 2, 3]"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(dir.path(), &[1], |c| c.history_limit = 4)
        .await
        .unwrap();
    let h = tc.handle(1).unwrap();
    register(&h, "a").await;
    for i in 0..10 {
        publish_one(&h, "a", i).await.unwrap();
    }
    let first = h.watch(1).next().await.unwrap();
    assert!(
        matches!(first, Err(WatchError::Compacted { requested: 1, .. })),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_write_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut tc = TestCluster::start(dir.path(), &[1, 2, 3, 4, 5], |_| {})
        .await
        .unwrap();
    let leader = tc
        .wait_leader(&[1, 2, 3, 4, 5], WAIT)
        .await
        .expect("leader");
    register(&tc.handle(leader).unwrap(), "a").await;
    let survivors: Vec<u64> = [1, 2, 3, 4, 5]
        .into_iter()
        .filter(|i| *i != leader)
        .collect();

    // Writers on the survivors keep going through the leader's death.
    let mut writers = Vec::new();
    for (w, id) in survivors.iter().enumerate() {
        let h = tc.handle(*id).unwrap();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60u64 {
                let n = (w as u64) * 1000 + i;
                if publish_one(&h, "a", n).await.is_ok() {
                    acked.push(n);
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    tc.kill(leader).await;
    let new_leader = tc
        .wait_leader(&survivors, WAIT)
        .await
        .expect("a new leader among the survivors");
    assert_ne!(new_leader, leader);
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 100,
        "most writes should succeed, got {}",
        acked.len()
    );
    let view = tc
        .handle(new_leader)
        .unwrap()
        .read_linearizable()
        .await
        .unwrap();
    for n in &acked {
        assert!(
            view.services["a"].contains_key(&key("default", &format!("svc-{n}"))),
            "acknowledged write {n} lost"
        );
    }
    // The old leader comes back and converges.
    tc.restart(leader).await.unwrap();
    assert!(tc.wait_revision(&[leader], view.revision, WAIT).await);
    assert_eq!(
        tc.handle(leader).unwrap().snapshot_stale().services,
        view.services
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_refuses_writes_serves_stale_reads_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(dir.path(), &[1, 2, 3, 4, 5], |c| {
        c.request_timeout = Duration::from_millis(800)
    })
    .await
    .unwrap();
    let leader = tc
        .wait_leader(&[1, 2, 3, 4, 5], WAIT)
        .await
        .expect("leader");
    register(&tc.handle(leader).unwrap(), "a").await;
    let base = publish_one(&tc.handle(leader).unwrap(), "a", 1)
        .await
        .unwrap();
    assert!(tc.wait_revision(&[1, 2, 3, 4, 5], base, WAIT).await);

    // The old leader ends up in the minority with one follower.
    let others: Vec<u64> = [1, 2, 3, 4, 5]
        .into_iter()
        .filter(|i| *i != leader)
        .collect();
    let minority = [leader, others[0]];
    let majority = [others[1], others[2], others[3]];
    tc.net.partition(&[&minority, &majority]);

    for id in minority {
        let h = tc.handle(id).unwrap();
        let err = publish_one(&h, "a", 100 + id).await.unwrap_err();
        assert!(
            matches!(
                err,
                FederationError::NoQuorum { .. } | FederationError::NoLeader { .. }
            ),
            "{err}"
        );
        assert!(!err.to_string().is_empty());
        let stale = h.snapshot_stale();
        assert!(
            stale.revision >= base,
            "stale reads keep serving the last state"
        );
        assert!(
            h.read_linearizable().await.is_err(),
            "a minority cannot serve linearizable reads"
        );
    }
    let new_leader = tc
        .wait_leader(&majority, WAIT)
        .await
        .expect("majority elects a leader");
    let h = tc.handle(new_leader).unwrap();
    let mut rev = 0;
    for i in 0..5 {
        rev = publish_one(&h, "a", 200 + i).await.unwrap();
    }
    tc.net.heal();
    assert!(
        tc.wait_revision(&[1, 2, 3, 4, 5], rev, WAIT).await,
        "healing converges"
    );
    let expected = h.read_linearizable().await.unwrap();
    for id in [1, 2, 3, 4, 5] {
        let v = tc.handle(id).unwrap().read_linearizable().await.unwrap();
        assert_eq!(v.services, expected.services, "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_duplicating_reordering_network_still_converges() {
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(dir.path(), &[1, 2, 3], |_| {})
        .await
        .unwrap();
    tc.net.set_faults(Faults {
        drop_rate: 0.1,
        duplicate_rate: 0.1,
        delay: Some((Duration::ZERO, Duration::from_millis(8))),
        ..Faults::default()
    });
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    register(&tc.handle(leader).unwrap(), "a").await;
    let mut acked = Vec::new();
    for i in 0..40u64 {
        let h = tc.handle(1 + i % 3).unwrap();
        if publish_one(&h, "a", i).await.is_ok() {
            acked.push(i);
        }
    }
    tc.net.heal();
    assert!(acked.len() >= 30, "only {} writes succeeded", acked.len());
    let v = tc.handle(2).unwrap().read_linearizable().await.unwrap();
    for i in acked {
        assert!(v.services["a"].contains_key(&key("default", &format!("svc-{i}"))));
    }
    assert!(tc.wait_revision(&[1, 2, 3], v.revision, WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_marks_endpoints_unavailable_and_renewal_restores_them() {
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(dir.path(), &[1, 2, 3], |_| {})
        .await
        .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    register(&h, "b").await;
    let rev = h
        .publish("a", upsert(service("a", "reviews", 2, 1)))
        .await
        .unwrap();
    // Only b keeps renewing.
    let renewer = h.spawn_lease_renewer("b".into(), Duration::from_millis(100));
    let mut events = tc.handle(2).unwrap().watch(rev + 1);
    let expired = tokio::time::timeout(WAIT, async {
        while let Some(e) = events.next().await {
            if let EventKind::LeaseExpired { cluster } = e.unwrap().kind {
                return cluster;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("lease of a expires");
    assert_eq!(expired, "a");
    let view = tc.handle(3).unwrap().read_linearizable().await.unwrap();
    let svc = &view.services["a"][&key("default", "reviews")];
    assert_eq!(svc.endpoints.len(), 2, "endpoints are kept");
    assert!(svc
        .endpoints
        .iter()
        .all(|e| e.health == Health::Unavailable));
    assert!(
        !view.leases["b"].expired,
        "a renewing cluster keeps its lease"
    );

    h.renew_lease("a").await.unwrap();
    let view = tc.handle(3).unwrap().read_linearizable().await.unwrap();
    assert!(view.services["a"][&key("default", "reviews")]
        .endpoints
        .iter()
        .all(|e| e.health == Health::Healthy));
    renewer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_moves_leadership() {
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(dir.path(), &[1, 2, 3], |_| {})
        .await
        .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    let target = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        h.transfer_leader(target).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tc.handle(target).unwrap().status().await.unwrap().role == Role::Leader {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leadership never moved to {target}"
        );
    }
    publish_one(&tc.handle(target).unwrap(), "a", 1)
        .await
        .expect("the new leader takes writes");
}

/// A command too large to replicate is refused at the door, naming the
/// limit, and the registry keeps its last good state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_commands_are_refused_before_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(dir.path(), &[1], |c| c.max_entry_bytes = 16 << 10)
        .await
        .unwrap();
    let h = tc.handle(1).unwrap();
    register(&h, "a").await;
    let before = publish_one(&h, "a", 1).await.unwrap();
    let err = h
        .publish("a", upsert(service("a", "huge", 500, 2)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FederationError::TooLarge { max, .. } if max == 16 << 10),
        "{err}"
    );
    assert!(err.to_string().contains("smaller diffs"), "{err}");
    let view = h.read_linearizable().await.unwrap();
    assert_eq!(view.revision, before);
    assert!(!view.services["a"].contains_key(&key("default", "huge")));
    publish_one(&h, "a", 3)
        .await
        .expect("later writes still go through");
}
