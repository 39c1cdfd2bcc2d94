//! Snapshot files: a Raft `Snapshot` (metadata + registry image) framed with a
//! magic, a length and a CRC32, written to a temporary file, fsynced, renamed
//! into place and the directory fsynced, so a crash leaves either the old or
//! the new file, never a torn one. The same format backs
//! `isthmus federation snapshot save|restore`.

use protobuf::Message as _;
use raft::eraftpb::Snapshot;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ISTHSNP1";
/// Refuse to allocate for absurd lengths read from a damaged header.
const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SnapFileError {
    #[error("cannot {action} snapshot file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot file {path} is not an Isthmus registry snapshot (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("snapshot file {path} is truncated or damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("snapshot file {path}: checksum mismatch (stored {stored:08x}, computed {computed:08x}); the file is corrupt")]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("cannot encode snapshot for {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: protobuf::ProtobufError,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapFileError + 'a {
    move |source| SnapFileError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `snap` to `path` atomically and durably.
pub fn write(path: &Path, snap: &Snapshot) -> Result<(), SnapFileError> {
    let payload = snap
        .write_to_bytes()
        .map_err(|source| SnapFileError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        let mut header = Vec::with_capacity(20);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        header.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        f.write_all(&header).map_err(io("write", &tmp))?;
        f.write_all(&payload).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> Result<(), SnapFileError> {
    let d = OpenOptions::new()
        .read(true)
        .open(dir)
        .map_err(io("open directory of", dir))?;
    d.sync_all().map_err(io("fsync directory of", dir))
}

/// Reads and verifies a snapshot file.
pub fn read(path: &Path) -> Result<Snapshot, SnapFileError> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut header = [0u8; 20];
    f.read_exact(&mut header)
        .map_err(|e| SnapFileError::Damaged {
            path: path.to_path_buf(),
            detail: format!("header unreadable: {e}"),
        })?;
    if &header[..8] != MAGIC {
        return Err(SnapFileError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..16]);
    let len = u64::from_be_bytes(len);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&header[16..20]);
    let stored = u32::from_be_bytes(crc);
    let actual_len = f
        .metadata()
        .map_err(io("stat", path))?
        .len()
        .saturating_sub(20);
    if len > MAX_SNAPSHOT_BYTES || len != actual_len {
        return Err(SnapFileError::Damaged {
            path: path.to_path_buf(),
            detail: format!("header says {len} payload bytes, file holds {actual_len}"),
        });
    }
    let mut payload = Vec::with_capacity(len as usize);
    f.read_to_end(&mut payload).map_err(io("read", path))?;
    let computed = crc32fast::hash(&payload);
    if computed != stored {
        return Err(SnapFileError::Checksum {
            path: path.to_path_buf(),
            stored,
            computed,
        });
    }
    Snapshot::parse_from_bytes(&payload).map_err(|e| SnapFileError::Damaged {
        path: path.to_path_buf(),
        detail: format!("payload does not decode: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = 7;
        s.mut_metadata().term = 2;
        s.mut_metadata()
            .mut_conf_state()
            .mut_voters()
            .extend([1, 2, 3]);
        s.data = b"registry".to_vec().into();
        s
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.snap");
        write(&p, &sample()).unwrap();
        assert_eq!(read(&p).unwrap(), sample());
        assert!(!p.with_extension("tmp").exists());
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.snap");
        write(&p, &sample()).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&p, &bytes).unwrap();
        assert!(matches!(read(&p), Err(SnapFileError::Checksum { .. })));
        bytes.truncate(bytes.len() - 3);
        fs::write(&p, &bytes).unwrap();
        assert!(matches!(read(&p), Err(SnapFileError::Damaged { .. })));
        fs::write(&p, b"garbage-garbage-garbage").unwrap();
        assert!(matches!(read(&p), Err(SnapFileError::BadMagic { .. })));
    }
}
