//! Root rotation on a live federation: the `isthmus ca` steps an operator
//! runs against each cluster's plug-in CA directory (docs/identity.md), and
//! probes of what proxies trust and present, checked with `openssl` as an
//! independent verifier.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::admin;
use crate::error::{io, HarnessError};

/// Runs `isthmus ca ARGS` and returns its standard output.
pub async fn ca(binary: &Path, args: &[&str]) -> Result<String, HarnessError> {
    let out = tokio::process::Command::new(binary)
        .arg("ca")
        .args(args)
        .output()
        .await
        .map_err(io("cannot run", binary))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Ca {
            step: format!("ca {}", args.join(" ")),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `isthmus ca init --out DIR --common-name NAME`: the new root.
pub async fn init_root(
    binary: &Path,
    dir: &Path,
    common_name: &str,
) -> Result<PathBuf, HarnessError> {
    ca(
        binary,
        &["init", "--out", &s(dir), "--common-name", common_name],
    )
    .await?;
    Ok(dir.join("root-cert.pem"))
}

/// Step 1: `isthmus ca bundle --dir CA_DIR --add NEW_ROOT` (trust the new root).
pub async fn add_root(
    binary: &Path,
    ca_dir: &Path,
    root_cert: &Path,
) -> Result<String, HarnessError> {
    ca(
        binary,
        &["bundle", "--dir", &s(ca_dir), "--add", &s(root_cert)],
    )
    .await
}

/// Step 2: `isthmus ca intermediate --root-dir NEW --cluster ID --out CA_DIR
/// --also-trust OLD_ROOT --force` (re-issue the intermediate under the new root).
pub async fn reissue_intermediate(
    binary: &Path,
    cluster: &str,
    trust_domain: &str,
    ca_dir: &Path,
    new_root_dir: &Path,
    also_trust: &Path,
) -> Result<String, HarnessError> {
    ca(
        binary,
        &[
            "intermediate",
            "--root-dir",
            &s(new_root_dir),
            "--cluster",
            cluster,
            "--trust-domain",
            trust_domain,
            "--out",
            &s(ca_dir),
            "--also-trust",
            &s(also_trust),
            "--force",
        ],
    )
    .await
}

/// Step 3: `isthmus ca bundle --dir CA_DIR --remove OLD_ROOT` (retire the old root).
pub async fn retire_root(
    binary: &Path,
    ca_dir: &Path,
    root_cert: &Path,
) -> Result<String, HarnessError> {
    ca(
        binary,
        &["bundle", "--dir", &s(ca_dir), "--remove", &s(root_cert)],
    )
    .await
}

/// How many roots the proxy at `admin` has applied for SDS `ROOTCA`
/// (from its `/config_dump`).
pub async fn rootca_count(admin: SocketAddr) -> Result<usize, String> {
    let dump = admin::get_json(admin, "/config_dump")
        .await
        .map_err(|e| e.to_string())?;
    dump.pointer("/resources/secrets/ROOTCA/root_count")
        .and_then(|v| v.as_u64())
        .map(|n| n as usize)
        .ok_or_else(|| format!("{admin}: no ROOTCA secret in /config_dump"))
}

/// The certificate chain (PEM, leaf first) a TLS server at `addr`
/// presents for `sni`, read with `openssl s_client -showcerts` (the
/// handshake may then fail for want of a client certificate; the chain
/// comes first).
pub async fn presented_chain(addr: SocketAddr, sni: &str) -> Result<Vec<String>, String> {
    let mut child = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-showcerts"])
        .args(["-servername", sni])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run openssl (install the openssl package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"Q\n").await;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| format!("openssl s_client {addr} did not finish"))?
        .map_err(|e| format!("openssl s_client {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut chain = Vec::new();
    let mut rest = text.as_ref();
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while let Some(b) = rest.find(BEGIN) {
        let Some(e) = rest[b..].find(END) else { break };
        let end = b + e + END.len();
        chain.push(format!("{}\n", &rest[b..end]));
        rest = &rest[end..];
    }
    if chain.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!(
            "{addr} (SNI {sni}) presented no certificate; openssl said: {}",
            last.join(" | ")
        ));
    }
    Ok(chain)
}

/// Whether `openssl verify -CAfile CA -untrusted INTERMEDIATES LEAF` accepts
/// `chain` (leaf first) with only the roots of `ca_file` trusted.
pub async fn openssl_verifies(
    ca_file: &Path,
    chain: &[String],
    scratch: &Path,
) -> Result<bool, String> {
    let leaf = scratch.join(format!("leaf-{}.pem", rand::random::<u32>()));
    let untrusted = scratch.join(format!("untrusted-{}.pem", rand::random::<u32>()));
    let first = chain.first().ok_or("empty chain")?;
    std::fs::write(&leaf, first).map_err(|e| e.to_string())?;
    std::fs::write(&untrusted, chain[1..].concat()).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["verify", "-CAfile"]).arg(ca_file);
    if chain.len() > 1 {
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let out = cmd
        .arg(&leaf)
        .output()
        .await
        .map_err(|e| format!("cannot run openssl verify: {e}"))?;
    let _ = std::fs::remove_file(&leaf);
    let _ = std::fs::remove_file(&untrusted);
    Ok(out.status.success())
}
