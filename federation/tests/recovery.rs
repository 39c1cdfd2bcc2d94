//! Disaster recovery: snapshot save/restore, forced recovery from quorum
//! loss, and the witness topology.

mod common;

use common::{publish_one, register, WAIT};
use isthmus_federation::fixtures::{key, service, upsert};
use isthmus_federation::recovery::{self, RecoveryError};
use isthmus_federation::testing::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_restore_reproduces_the_registry_in_a_new_federation() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let tc = TestCluster::start(&dir.path().join("old"), &[1, 2, 3], |_| {})
        .await
        .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    register(&h, "b").await;
    h.publish("a", upsert(service("a", "reviews", 3, 1)))
        .await
        .unwrap();
    h.publish("b", upsert(service("b", "reviews", 2, 2)))
        .await
        .unwrap();
    for i in 0..10 {
        publish_one(&h, "b", i).await.unwrap();
    }
    let backup = dir.path().join("registry.snap");
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let saved = recovery::save(&tc.handle(follower).unwrap(), &backup)
        .await
        .unwrap();
    let original = h.read_linearizable().await.unwrap();
    assert_eq!(saved.revision, original.revision);
    assert_eq!(saved.clusters, 2);

    // A brand-new federation seeded from the file.
    let mut fresh = TestCluster::start(&dir.path().join("new"), &[], |_| {})
        .await
        .unwrap();
    let image = recovery::load(&backup).unwrap();
    recovery::restore(&image, &fresh.data_dir(10), 10).unwrap();
    fresh.start_joiner(10, |_| {}).await.unwrap();
    let h10 = fresh.handle(10).unwrap();
    let restored = h10.read_linearizable().await.unwrap();
    assert_eq!(restored.clusters, original.clusters);
    assert_eq!(restored.services, original.services);
    assert_eq!(
        restored.leases.keys().collect::<Vec<_>>(),
        original.leases.keys().collect::<Vec<_>>()
    );
    assert_eq!(restored.revision, original.revision);
    // It takes writes and members.
    let rev = publish_one(&h10, "a", 77).await.unwrap();
    assert_eq!(
        rev,
        original.revision + 1,
        "revisions continue from the backup"
    );
    fresh.start_joiner(11, |_| {}).await.unwrap();
    h10.add_voter(11, "mem:11").await.unwrap();
    assert!(
        fresh.wait_revision(&[11], rev, WAIT).await,
        "a joiner gets the restored state"
    );

    // Restoring over existing state is refused; a damaged file is detected.
    let err = recovery::restore(&image, &fresh.data_dir(10), 10).unwrap_err();
    assert!(matches!(err, RecoveryError::NotEmpty(_)), "{err}");
    let mut bytes = std::fs::read(&backup).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&backup, &bytes).unwrap();
    let err = recovery::load(&backup).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_recovery_from_permanent_quorum_loss() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut tc = TestCluster::start(dir.path(), &[1, 2, 3], |c| {
        c.snapshot_every = 10;
        c.keep_entries = 2;
    })
    .await
    .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    let mut acked = Vec::new();
    for i in 0..25 {
        publish_one(&h, "a", i).await.unwrap();
        acked.push(i);
    }
    let survivor = leader;
    // Two of three members are gone for good; the survivor cannot write.
    for id in [1, 2, 3] {
        tc.kill(id).await;
    }
    let err = recovery::force_new_federation(&tc.data_dir(survivor), survivor, false).unwrap_err();
    assert!(matches!(err, RecoveryError::NotConfirmed), "{err}");
    let image = recovery::force_new_federation(&tc.data_dir(survivor), survivor, true).unwrap();
    assert_eq!(image.published.len(), 25);
    tc.restart(survivor).await.unwrap();
    let h = tc.handle(survivor).unwrap();
    let status = h.status().await.unwrap();
    assert_eq!(status.voters, vec![survivor]);
    publish_one(&h, "a", 1000)
        .await
        .expect("the new single-member federation takes writes");
    let view = h.read_linearizable().await.unwrap();
    for i in acked {
        assert!(view.services["a"].contains_key(&key("default", &format!("svc-{i}"))));
    }
    // Others join the new federation with fresh data.
    tc.start_joiner(4, |_| {}).await.unwrap();
    h.add_voter(4, "mem:4").await.unwrap();
    assert!(tc.wait_revision(&[4], view.revision, WAIT).await);
}

/// Two clusters plus a witness (a voter with no cluster behind it) survive
/// the loss of either cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_and_a_witness_survive_losing_either_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // Nodes 1 and 2 are the clusters' control planes, node 3 is the witness.
    let mut tc = TestCluster::start(dir.path(), &[1, 2, 3], |c| c.witness = c.id == 3)
        .await
        .unwrap();
    tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    register(&tc.handle(1).unwrap(), "a").await;
    register(&tc.handle(2).unwrap(), "b").await;
    for lost in [1u64, 2] {
        let kept = 3 - lost;
        tc.kill(lost).await;
        tc.wait_leader(&[kept, 3], WAIT)
            .await
            .expect("the survivor and the witness form a quorum");
        let cluster = if kept == 1 { "a" } else { "b" };
        publish_one(&tc.handle(kept).unwrap(), cluster, lost)
            .await
            .expect("writes continue");
        tc.restart(lost).await.unwrap();
        let rev = tc
            .handle(kept)
            .unwrap()
            .read_linearizable()
            .await
            .unwrap()
            .revision;
        assert!(tc.wait_revision(&[lost], rev, WAIT).await);
    }
    // The witness voted throughout but holds no registry data.
    let w = tc.handle(3).unwrap();
    let view = w.snapshot_stale();
    assert!(view.clusters.is_empty() && view.services.is_empty());
    assert!(w.status().await.unwrap().commit > 0);
}
