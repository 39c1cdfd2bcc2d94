//! Durable Raft storage: entries and small state in raft-engine (tikv's log
//! store made for raft-rs), snapshots as checksummed files beside it.
//!
//! Layout under the node's data directory:
//! - `log/`: raft-engine files (entries, hard state, conf state, truncated state)
//! - `snap/current.snap`: the latest snapshot (see `snapfile`)
//!
//! Owned by the node task only; `raft::Storage` takes `&self`, mutation goes
//! through `RawNode::mut_store()`.

use crate::snapfile::{self, SnapFileError};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Engine, LogBatch, MessageExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// raft-engine keeps one log per "region"; the registry is one Raft group.
const GROUP: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_TRUNCATED: &[u8] = b"truncated";
/// Log index of the last configuration change applied to `conf_state`, so a
/// replay after restart does not apply it twice.
const KEY_CONF_INDEX: &[u8] = b"conf_index";

#[derive(Clone)]
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageOpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the Raft log in {path}: {source}; check permissions and that no other process uses this directory")]
    Engine {
        path: PathBuf,
        #[source]
        source: raft_engine::Error,
    },
    #[error("the Raft log in {path} holds an undecodable {what}: {detail}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapFileError),
}

#[derive(Debug, thiserror::Error)]
pub enum StorageWriteError {
    #[error("cannot write the Raft log: {0}; the disk may be full or failing")]
    Engine(#[from] raft_engine::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapFileError),
}

/// Index and term of the last entry removed from the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Truncated {
    index: u64,
    term: u64,
}

impl Truncated {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.index.to_be_bytes().to_vec();
        v.extend_from_slice(&self.term.to_be_bytes());
        v
    }
    fn decode(b: &[u8]) -> Option<Truncated> {
        if b.len() != 16 {
            return None;
        }
        let mut i = [0u8; 8];
        let mut t = [0u8; 8];
        i.copy_from_slice(&b[..8]);
        t.copy_from_slice(&b[8..]);
        Some(Truncated {
            index: u64::from_be_bytes(i),
            term: u64::from_be_bytes(t),
        })
    }
}

pub struct DiskStorage {
    engine: Arc<Engine>,
    snap_path: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    truncated: Truncated,
    snapshot: Snapshot,
    conf_index: u64,
    /// Set when Raft asked for a snapshot the stored one cannot serve; the
    /// node takes a fresh one (Raft retries the send by itself).
    snapshot_wanted: AtomicBool,
    /// False on a witness: its snapshots hold no registry data, so it must
    /// never send one.
    serves_snapshots: bool,
    /// Nothing was on disk when opened.
    fresh: bool,
}

fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl DiskStorage {
    /// Opens (or creates) the storage in `dir`. `bootstrap_voters` seeds the
    /// configuration of a brand-new federation and is ignored once anything
    /// is on disk; a node joining an existing federation passes none.
    pub fn open(dir: &Path, bootstrap_voters: &[u64]) -> Result<DiskStorage, StorageOpenError> {
        let log_dir = dir.join("log");
        let snap_dir = dir.join("snap");
        for d in [&log_dir, &snap_dir] {
            std::fs::create_dir_all(d).map_err(|source| StorageOpenError::CreateDir {
                path: d.clone(),
                source,
            })?;
        }
        let cfg = raft_engine::Config {
            dir: log_dir.to_string_lossy().into_owned(),
            target_file_size: raft_engine::ReadableSize::mb(8),
            purge_threshold: raft_engine::ReadableSize::mb(64),
            ..Default::default()
        };
        let engine = Engine::open(cfg).map_err(|source| StorageOpenError::Engine {
            path: log_dir.clone(),
            source,
        })?;
        let corrupt = |what: &'static str, e: &dyn std::fmt::Display| StorageOpenError::Corrupt {
            path: log_dir.clone(),
            what,
            detail: e.to_string(),
        };
        let hard_state: Option<HardState> = engine
            .get_message(GROUP, KEY_HARD_STATE)
            .map_err(|e| corrupt("hard state", &e))?;
        let conf_state: Option<ConfState> = engine
            .get_message(GROUP, KEY_CONF_STATE)
            .map_err(|e| corrupt("conf state", &e))?;
        let truncated = match engine.get(GROUP, KEY_TRUNCATED) {
            Some(b) => {
                Truncated::decode(&b).ok_or_else(|| corrupt("truncated state", &"wrong length"))?
            }
            None => Truncated::default(),
        };
        let conf_index = match engine.get(GROUP, KEY_CONF_INDEX) {
            Some(b) => {
                let arr: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("conf index", &"wrong length"))?;
                u64::from_be_bytes(arr)
            }
            None => 0,
        };
        let snap_path = snap_dir.join("current.snap");
        let snapshot = if snap_path.exists() {
            snapfile::read(&snap_path)?
        } else {
            Snapshot::default()
        };
        let fresh =
            hard_state.is_none() && conf_state.is_none() && snapshot.get_metadata().index == 0;
        let mut storage = DiskStorage {
            engine: Arc::new(engine),
            snap_path,
            hard_state: hard_state.unwrap_or_default(),
            conf_state: conf_state.unwrap_or_default(),
            truncated,
            snapshot,
            conf_index,
            snapshot_wanted: AtomicBool::new(false),
            serves_snapshots: true,
            fresh,
        };
        // The snapshot only holds committed state, so the commit index is at
        // least its index even if the commit was not persisted before a crash.
        let snap_index = storage.snapshot.get_metadata().index;
        if storage.hard_state.commit < snap_index {
            storage.hard_state.commit = snap_index;
        }
        if fresh && !bootstrap_voters.is_empty() {
            storage.conf_state = ConfState::from((bootstrap_voters.to_vec(), Vec::<u64>::new()));
            let mut batch = LogBatch::default();
            let engine_err = |source| StorageOpenError::Engine {
                path: log_dir.clone(),
                source,
            };
            batch
                .put_message(GROUP, KEY_CONF_STATE.to_vec(), &storage.conf_state)
                .map_err(engine_err)?;
            // Start at term 1, as etcd does: raft-rs 0.7 panics when it
            // rejects a (pre-)vote while still at term 0, which election
            // priorities (the witness) make possible on a fresh federation.
            storage.hard_state.term = 1;
            batch
                .put_message(GROUP, KEY_HARD_STATE.to_vec(), &storage.hard_state)
                .map_err(engine_err)?;
            storage.engine.write(&mut batch, true).map_err(engine_err)?;
        }
        Ok(storage)
    }

    /// Whether the directory held no federation state when opened.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Starts a brand-new federation from a snapshot at index 1 (term 1)
    /// holding `voters` and the empty registry `image`, instead of a bare
    /// configuration: the log then starts at index 2, so the leader brings
    /// any member added later up to date with a snapshot, which carries the
    /// whole configuration (a configuration only on disk would never reach
    /// a joining node through the log).
    pub fn bootstrap(&mut self, voters: &[u64], image: Vec<u8>) -> Result<(), StorageWriteError> {
        let mut snap = Snapshot::default();
        snap.data = image.into();
        let meta = snap.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.set_conf_state(ConfState::from((voters.to_vec(), Vec::<u64>::new())));
        self.apply_snapshot(snap)?;
        self.fresh = false;
        Ok(())
    }

    /// Makes this a witness's storage: Raft gets no snapshot from it.
    pub fn refuse_snapshots(&mut self) {
        self.serves_snapshots = false;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot (empty when none was taken yet).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether Raft asked for a newer snapshot since the last call.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    pub fn truncated_index(&self) -> u64 {
        self.truncated.index
    }

    fn last(&self) -> u64 {
        self.engine
            .last_index(GROUP)
            .unwrap_or(self.truncated.index)
            .max(self.truncated.index)
    }

    /// Appends entries (replacing any conflicting tail) and the hard state in
    /// one write; fsynced when `sync` (Raft requires it before sending
    /// messages that depend on them).
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageWriteError> {
        let mut batch = LogBatch::default();
        if !entries.is_empty() {
            batch.add_entries::<EntryExt>(GROUP, entries)?;
        }
        if let Some(hs) = hs {
            batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), hs)?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.engine.write(&mut batch, sync)?;
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageWriteError> {
        if commit <= self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs), false)
    }

    /// Index of the configuration change `conf_state` includes.
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    pub fn set_conf_state(&mut self, cs: ConfState, index: u64) -> Result<(), StorageWriteError> {
        let mut batch = LogBatch::default();
        batch.put_message(GROUP, KEY_CONF_STATE.to_vec(), &cs)?;
        batch.put(GROUP, KEY_CONF_INDEX.to_vec(), index.to_be_bytes().to_vec())?;
        self.engine.write(&mut batch, true)?;
        self.conf_state = cs;
        self.conf_index = index;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the file first (durable),
    /// then the log is replaced by it.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> Result<(), StorageWriteError> {
        snapfile::write(&self.snap_path, &snap)?;
        let meta = snap.get_metadata();
        let truncated = Truncated {
            index: meta.index,
            term: meta.term,
        };
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        let mut batch = LogBatch::default();
        batch.add_command(GROUP, raft_engine::Command::Clean);
        batch.put_message(GROUP, KEY_HARD_STATE.to_vec(), &hs)?;
        batch.put_message(GROUP, KEY_CONF_STATE.to_vec(), meta.get_conf_state())?;
        batch.put(GROUP, KEY_TRUNCATED.to_vec(), truncated.encode())?;
        batch.put(
            GROUP,
            KEY_CONF_INDEX.to_vec(),
            meta.index.to_be_bytes().to_vec(),
        )?;
        self.engine.write(&mut batch, true)?;
        self.conf_index = meta.index;
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.truncated = truncated;
        self.snapshot = snap;
        Ok(())
    }

    /// Stores a snapshot the node took of its own applied state and drops log
    /// entries up to `compact_to` (kept at or below the snapshot index, so
    /// slightly lagging followers still catch up from the log).
    pub fn install_local_snapshot(
        &mut self,
        snap: Snapshot,
        compact_to: u64,
    ) -> Result<(), StorageWriteError> {
        let snap_index = snap.get_metadata().index;
        snapfile::write(&self.snap_path, &snap)?;
        self.snapshot = snap;
        let compact_to = compact_to.min(snap_index);
        if compact_to > self.truncated.index && compact_to <= self.last() {
            let term = self.term_of(compact_to).map_err(|e| {
                StorageWriteError::Engine(raft_engine::Error::Other(Box::new(
                    std::io::Error::other(e.to_string()),
                )))
            })?;
            let truncated = Truncated {
                index: compact_to,
                term,
            };
            let mut batch = LogBatch::default();
            batch.put(GROUP, KEY_TRUNCATED.to_vec(), truncated.encode())?;
            self.engine.write(&mut batch, true)?;
            self.engine.compact_to(GROUP, compact_to + 1);
            self.truncated = truncated;
            // Reclaims whole files; cheap when nothing is due.
            self.engine.purge_expired_files()?;
        }
        Ok(())
    }

    fn term_of(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.index {
            return Ok(self.truncated.term);
        }
        let snap = self.snapshot.get_metadata();
        if idx == snap.index && snap.index > 0 {
            return Ok(snap.term);
        }
        if idx < self.truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self
            .engine
            .get_entry::<EntryExt>(GROUP, idx)
            .map_err(store_err)?
        {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        if low >= high {
            return Ok(out);
        }
        let max = max_size.into().map(|m| m as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(GROUP, low, high, max, &mut out)
            .map_err(|e| match e {
                raft_engine::Error::EntryCompacted => raft::Error::Store(StorageError::Compacted),
                raft_engine::Error::EntryNotFound => raft::Error::Store(StorageError::Unavailable),
                other => store_err(other),
            })?;
        if out.is_empty() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if !self.serves_snapshots {
            // A witness leading briefly: the peer waits for a replica leader.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let meta = self.snapshot.get_metadata();
        let cs = meta.get_conf_state();
        // A peer added after the snapshot was taken refuses a snapshot whose
        // configuration does not name it: take a fresh one instead.
        let names_peer = cs.voters.contains(&to)
            || cs.learners.contains(&to)
            || cs.voters_outgoing.contains(&to)
            || cs.learners_next.contains(&to);
        if meta.index < request_index.max(self.truncated.index) || meta.index == 0 || !names_peer {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// Encoded size of a snapshot, for metrics and limits.
pub fn snapshot_size(s: &Snapshot) -> usize {
    s.compute_size() as usize
}

#[cfg(test)]
mod tests;
