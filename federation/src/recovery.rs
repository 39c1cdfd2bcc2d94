//! Disaster recovery of the registry itself:
//! - `save`: a consistent, checksummed copy of the registry from a live node;
//! - `restore`: seeds an empty data directory with a saved registry as a new
//!   single-member federation, which other nodes then join;
//! - `force_new_federation`: after permanent loss of quorum, turns a
//!   survivor's data into a new single-member federation. Refused unless the
//!   operator confirms, because writes that only the lost members had may be
//!   gone and the old members must never be restarted against it.

use crate::command::Command;
use crate::handle::{FederationError, Handle};
use crate::snapfile::{self, SnapFileError};
use crate::state::{Registry, StateImage};
use crate::storage::{DiskStorage, StorageOpenError, StorageWriteError};
use raft::eraftpb::{ConfState, EntryType, Snapshot};
use raft::{GetEntriesContext, Storage as _};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot read the registry from the federation: {0}")]
    Federation(#[from] FederationError),
    #[error(transparent)]
    File(#[from] SnapFileError),
    #[error("snapshot file {path} does not hold a registry image: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the registry image: {0}")]
    Encode(serde_json::Error),
    #[error("data directory {0} already holds federation state; restore only into an empty directory (move the old one aside first)")]
    NotEmpty(PathBuf),
    #[error("forced recovery rewrites membership and may drop writes only the lost members had; re-run with explicit confirmation (e.g. `--yes-i-lost-quorum`) once the other members are known to be gone for good")]
    NotConfirmed,
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Open(#[from] StorageOpenError),
    #[error(transparent)]
    Write(#[from] StorageWriteError),
    #[error("cannot read the survivor's log: {0}")]
    Log(#[from] raft::Error),
    #[error("node id must not be 0")]
    ZeroId,
    #[error("{0} holds a witness's data: a witness keeps no registry, so there is nothing to recover from it; recover from a replica's data directory or a saved snapshot")]
    Witness(PathBuf),
}

/// What `save` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSnapshot {
    pub revision: u64,
    pub applied_index: u64,
    pub clusters: usize,
}

/// Writes a consistent registry image from a live node to `path`.
pub async fn save(handle: &Handle, path: &Path) -> Result<SavedSnapshot, RecoveryError> {
    let image = handle.consistent_image().await?;
    save_image(&image, path)
}

/// CRC-32 of bytes in transit (the admin port's snapshot body), the same
/// checksum the snapshot files carry.
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Writes `image` to `path` in the checksummed snapshot file format,
/// atomically (temporary file, fsync, rename, directory fsync).
pub fn save_image(image: &StateImage, path: &Path) -> Result<SavedSnapshot, RecoveryError> {
    if image.witness {
        return Err(RecoveryError::Witness(path.to_path_buf()));
    }
    let saved = SavedSnapshot {
        revision: image.revision,
        applied_index: image.applied_index,
        clusters: image.clusters.len(),
    };
    let data = serde_json::to_vec(image).map_err(RecoveryError::Encode)?;
    let mut snap = Snapshot::default();
    snap.data = data.into();
    snap.mut_metadata().index = image.applied_index;
    snapfile::write(path, &snap)?;
    Ok(saved)
}

/// Reads and verifies a saved registry image.
pub fn load(path: &Path) -> Result<StateImage, RecoveryError> {
    let snap = snapfile::read(path)?;
    let image: StateImage =
        serde_json::from_slice(&snap.data).map_err(|source| RecoveryError::Image {
            path: path.to_path_buf(),
            source,
        })?;
    if image.witness {
        return Err(RecoveryError::Witness(path.to_path_buf()));
    }
    Ok(image)
}

/// Seeds the empty `data_dir` with `image` as a new federation whose only
/// voter is `node_id`. Start the node with no bootstrap voters afterwards.
pub fn restore(image: &StateImage, data_dir: &Path, node_id: u64) -> Result<(), RecoveryError> {
    if node_id == 0 {
        return Err(RecoveryError::ZeroId);
    }
    if image.witness {
        return Err(RecoveryError::Witness(data_dir.to_path_buf()));
    }
    if has_state(data_dir)? {
        return Err(RecoveryError::NotEmpty(data_dir.to_path_buf()));
    }
    let mut storage = DiskStorage::open(data_dir, &[])?;
    let mut image = image.clone();
    // Raft needs a non-zero snapshot index; the image's own index is kept
    // when it has one so revisions and indexes stay comparable.
    image.applied_index = image.applied_index.max(1);
    let mut snap = Snapshot::default();
    snap.data = serde_json::to_vec(&image)
        .map_err(RecoveryError::Encode)?
        .into();
    let meta = snap.mut_metadata();
    meta.index = image.applied_index;
    meta.term = 1;
    meta.set_conf_state(ConfState::from((vec![node_id], Vec::<u64>::new())));
    storage.apply_snapshot(snap)?;
    Ok(())
}

/// After permanent quorum loss: rebuilds the registry from a survivor's data
/// (its snapshot plus every entry in its log, committed or not, as
/// etcd's `--force-new-cluster` does), moves the old data aside to
/// `<data_dir>.pre-recovery` and seeds `data_dir` as a new single-member
/// federation with voter `node_id`. Returns the image it kept.
pub fn force_new_federation(
    data_dir: &Path,
    node_id: u64,
    confirmed: bool,
) -> Result<StateImage, RecoveryError> {
    if !confirmed {
        return Err(RecoveryError::NotConfirmed);
    }
    let image = survivor_image(data_dir)?;
    let aside = data_dir.with_extension("pre-recovery");
    std::fs::rename(data_dir, &aside).map_err(|source| RecoveryError::Io {
        path: aside.clone(),
        source,
    })?;
    restore(&image, data_dir, node_id)?;
    tracing::warn!(dir = %data_dir.display(), old = %aside.display(), revision = image.revision, "forced a new single-member federation from survivor data");
    Ok(image)
}

fn survivor_image(data_dir: &Path) -> Result<StateImage, RecoveryError> {
    let storage = DiskStorage::open(data_dir, &[])?;
    let snap = storage.latest_snapshot();
    let mut registry = if snap.get_metadata().index > 0 {
        let image: StateImage =
            serde_json::from_slice(&snap.data).map_err(|source| RecoveryError::Image {
                path: data_dir.to_path_buf(),
                source,
            })?;
        if image.witness {
            return Err(RecoveryError::Witness(data_dir.to_path_buf()));
        }
        Registry::from_image(image, 1)
    } else {
        Registry::new(1)
    };
    let first = storage.first_index()?.max(registry.applied_index() + 1);
    let last = storage.last_index()?;
    if first <= last {
        for e in storage.entries(first, last + 1, None, GetEntriesContext::empty(false))? {
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                registry.set_applied_index(e.index);
                continue;
            }
            match Command::decode(e.index, &e.data) {
                Ok(cmd) => {
                    let id = crate::command::ProposalId::decode(&e.context);
                    registry.apply(e.index, id, cmd);
                }
                Err(err) => {
                    tracing::error!(error = %err, "skipping undecodable entry during forced recovery");
                    registry.set_applied_index(e.index);
                }
            }
        }
    }
    Ok(registry.to_image())
}

fn has_state(dir: &Path) -> Result<bool, RecoveryError> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => Ok(it.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RecoveryError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
