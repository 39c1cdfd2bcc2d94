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
    write_plugin_with_bundle(dir, intermediate, root_cert_pem, root_cert_pem, force)
}

/// Like [`write_plugin`], but root-cert.pem holds `bundle_pem` (the signing
/// root plus the roots still trusted during a rotation) while cert-chain.pem
/// ends in the signing root only.
pub fn write_plugin_with_bundle(
    dir: &Path,
    intermediate: &CaMaterial,
    signing_root_pem: &str,
    bundle_pem: &str,
    force: bool,
) -> Result<PluginPaths, CaError> {
    let paths = PluginPaths::in_dir(dir);
    refuse_overwrite(&paths.ca_key, force)?;
    let chain = format!(
        "{}{}",
        ensure_newline(&intermediate.cert_pem),
        ensure_newline(signing_root_pem)
    );
    // A running control plane watching `dir` sees the four renames within
    // milliseconds; it reloads once they have settled and refuses any
    // in-between mix (key of one run, certificate of another).
    write_atomic(&paths.root_cert, bundle_pem.as_bytes(), CERT_MODE)?;
    write_atomic(&paths.cert_chain, chain.as_bytes(), CERT_MODE)?;
    write_atomic(&paths.ca_key, intermediate.key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(&paths.ca_cert, intermediate.cert_pem.as_bytes(), CERT_MODE)?;
    Ok(paths)
}

/// The union of the certificates of several PEM texts, each kept once, in
/// order of first appearance (for root-cert.pem bundles).
pub fn bundle_pem<'a>(
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<String, CaError> {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut out = String::new();
    for (what, pem) in sources {
        for der in crate::pem::certs_from_pem(pem, what)? {
            if !seen.iter().any(|s| s.as_slice() == der.as_ref()) {
                out.push_str(&crate::pem::cert_to_pem(&der));
                seen.push(der.to_vec());
            }
        }
    }
    Ok(out)
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
