//! CA files on disk, with Istio's plug-in CA names so existing Istio users
//! recognise them: `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::ca::{Authority, CaError, CaMaterial, LeafPolicy};

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The root's private key (only on the machine that runs `isthmus ca init`).
pub const ROOT_KEY: &str = "root-key.pem";

/// Private keys are readable by their owner only.
pub const KEY_MODE: u32 = 0o600;
pub const CERT_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, fsynced, renamed over the target, then the directory fsynced.
/// A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| CaError::write(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| CaError::write(path, e))
}

pub fn read_to_string(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|e| CaError::read(path, e))
}

fn refuse_overwrite(path: &Path, force: bool) -> Result<(), CaError> {
    if !force && path.exists() {
        return Err(CaError::Exists {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Paths of the files of one directory.
#[derive(Clone, Debug)]
pub struct PluginPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub root_cert: PathBuf,
    pub cert_chain: PathBuf,
}

impl PluginPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join(CA_CERT),
            ca_key: dir.join(CA_KEY),
            root_cert: dir.join(ROOT_CERT),
            cert_chain: dir.join(CERT_CHAIN),
        }
    }
}

/// Writes a root's certificate and key (`root-cert.pem`, `root-key.pem`).
pub fn write_root(dir: &Path, root: &CaMaterial, force: bool) -> Result<(), CaError> {
    let key = dir.join(ROOT_KEY);
    let cert = dir.join(ROOT_CERT);
    refuse_overwrite(&key, force)?;
    refuse_overwrite(&cert, force)?;
    write_atomic(&key, root.key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(&cert, root.cert_pem.as_bytes(), CERT_MODE)
}

pub fn read_root(dir: &Path) -> Result<CaMaterial, CaError> {
    Ok(CaMaterial {
        cert_pem: read_to_string(&dir.join(ROOT_CERT))?,
        key_pem: read_to_string(&dir.join(ROOT_KEY))?,
    })
}

/// Writes Istio's four plug-in files for an intermediate signed by `root_cert_pem`.
pub fn write_plugin(
    dir: &Path,
    intermediate: &CaMaterial,
    root_cert_pem: &str,
    force: bool,
) -> Result<PluginPaths, CaError> {
    let paths = PluginPaths::in_dir(dir);
    refuse_overwrite(&paths.ca_key, force)?;
    let chain = format!(
        "{}{}",
        ensure_newline(&intermediate.cert_pem),
        ensure_newline(root_cert_pem)
    );
    write_atomic(&paths.ca_key, intermediate.key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(&paths.ca_cert, intermediate.cert_pem.as_bytes(), CERT_MODE)?;
    write_atomic(&paths.root_cert, root_cert_pem.as_bytes(), CERT_MODE)?;
    write_atomic(&paths.cert_chain, chain.as_bytes(), CERT_MODE)?;
    Ok(paths)
}

/// Loads the issuing CA from a plug-in directory.
pub fn load_authority(
    dir: &Path,
    trust_domain: &str,
    policy: LeafPolicy,
) -> Result<Authority, CaError> {
    let paths = PluginPaths::in_dir(dir);
    let ca = CaMaterial {
        cert_pem: read_to_string(&paths.ca_cert)?,
        key_pem: read_to_string(&paths.ca_key)?,
    };
    let chain = read_to_string(&paths.cert_chain)?;
    let root = read_to_string(&paths.root_cert)?;
    Authority::new(&ca, &chain, &root, trust_domain, policy)
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}
