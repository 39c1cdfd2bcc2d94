use super::*;
use raft::Storage as _;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = format!("e{index}").into_bytes().into();
    e
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    let mut h = HardState::default();
    h.term = term;
    h.vote = vote;
    h.commit = commit;
    h
}

#[test]
fn bootstrap_then_reopen_keeps_entries_and_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        s.persist(
            &(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            Some(&hs(1, 2, 3)),
            true,
        )
        .unwrap();
        // A conflicting tail from a new leader replaces entries 4..5.
        s.persist(&[entry(4, 2)], Some(&hs(2, 2, 3)), true).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
    }
    // Bootstrap voters are ignored once state exists.
    let s = DiskStorage::open(dir.path(), &[9]).unwrap();
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    assert_eq!(s.hard_state(), &hs(2, 2, 3));
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(s.term(4).unwrap(), 2);
    let got = s
        .entries(1, 5, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1), (3, 1), (4, 2)]
    );
    let one = s
        .entries(1, 5, Some(0), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(one.len(), 1, "max_size still returns one entry");
}

#[test]
fn local_snapshot_compacts_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut snap = Snapshot::default();
    {
        let mut s = DiskStorage::open(dir.path(), &[1]).unwrap();
        s.persist(
            &(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            Some(&hs(1, 1, 10)),
            true,
        )
        .unwrap();
        snap.mut_metadata().index = 8;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().set_conf_state(s.conf_state().clone());
        snap.data = b"image".to_vec().into();
        s.install_local_snapshot(snap.clone(), 6).unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert!(matches!(
            s.entries(5, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
    }
    let s = DiskStorage::open(dir.path(), &[1]).unwrap();
    assert_eq!(s.first_index().unwrap(), 7);
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.term(6).unwrap(), 1);
    assert_eq!(s.snapshot(0, 1).unwrap(), snap);
    assert!(!s.take_snapshot_request());
    // Peer 2 is not in the snapshot's configuration: it would refuse it, so
    // the storage asks the node for a fresh snapshot instead.
    assert!(matches!(
        s.snapshot(0, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    assert!(s.take_snapshot_request());
}

#[test]
fn received_snapshot_replaces_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DiskStorage::open(dir.path(), &[1, 2]).unwrap();
        s.persist(
            &(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            Some(&hs(1, 1, 2)),
            true,
        )
        .unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 4;
        snap.mut_metadata()
            .mut_conf_state()
            .mut_voters()
            .extend([1, 2, 3]);
        s.apply_snapshot(snap).unwrap();
        assert_eq!(s.first_index().unwrap(), 51);
        assert_eq!(s.last_index().unwrap(), 50);
        s.persist(&[entry(51, 4)], None, true).unwrap();
    }
    let s = DiskStorage::open(dir.path(), &[]).unwrap();
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    assert_eq!(s.hard_state().commit, 50);
    assert_eq!(s.first_index().unwrap(), 51);
    assert_eq!(s.last_index().unwrap(), 51);
    assert_eq!(s.term(50).unwrap(), 4);
}
