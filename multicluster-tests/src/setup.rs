//! Preparing a federation on disk before anything runs: loopback blocks,
//! the root CA and per-cluster intermediates (made by `isthmus ca`, the
//! same commands an operator runs), bootstrap tokens and config dirs.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{io, HarnessError};
use crate::render;
use crate::spec::{Block, ClusterSpec, ConfigSource};

const FIRST_OCTET: u8 = 20;
const LAST_OCTET: u8 = 250;

/// Whether nothing on this machine uses the block's fixed ports.
pub fn block_free(b: Block) -> bool {
    let tcp = [
        b.control_admin(),
        b.grpc(),
        b.eastwest(),
        b.workload_admin(1),
    ];
    tcp.iter().all(|a| std::net::TcpListener::bind(a).is_ok())
        && UdpSocket::bind(b.federation()).is_ok()
}

/// `n` consecutive free blocks. A process-wide counter keeps parallel tests
/// of one binary apart; the probe keeps concurrent test processes apart
/// (the start is spread by pid so they rarely even probe the same blocks).
pub fn allocate_blocks(n: usize) -> Result<Vec<Block>, HarnessError> {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    let span = usize::from(LAST_OCTET - FIRST_OCTET);
    let n8 = u8::try_from(n).map_err(|_| HarnessError::NoFreeBlock(n))?;
    if n == 0 || n > span {
        return Err(HarnessError::NoFreeBlock(n));
    }
    let spread = (std::process::id() as usize * 7) % span;
    for _ in 0..span {
        let step = usize::from(NEXT.fetch_add(n8, Ordering::Relaxed));
        let first = FIRST_OCTET as usize + (spread + step) % (span - n + 1);
        let blocks: Vec<Block> = (0..n)
            .map(|i| Block {
                octet: u8::try_from(first + i).unwrap_or(LAST_OCTET),
            })
            .collect();
        if blocks.iter().all(|b| block_free(*b)) {
            return Ok(blocks);
        }
    }
    Err(HarnessError::NoFreeBlock(n))
}

async fn isthmus(binary: &Path, args: &[&str]) -> Result<(), HarnessError> {
    let out = tokio::process::Command::new(binary)
        .args(args)
        .output()
        .await
        .map_err(io("cannot run", binary))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Ca {
            step: args.join(" "),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Root CA in `root_dir` and one intermediate per cluster in
/// `<cluster dir>/ca`; existing files are kept (the demo's state dir).
pub async fn pki(
    binary: &Path,
    root_dir: &Path,
    clusters: &[(String, PathBuf)],
    trust_domain: &str,
) -> Result<PathBuf, HarnessError> {
    let root_cert = root_dir.join("root-cert.pem");
    if !root_cert.exists() {
        let out = root_dir.to_string_lossy();
        isthmus(binary, &["ca", "init", "--out", &out]).await?;
    }
    for (name, dir) in clusters {
        let ca = dir.join("ca");
        if ca.join("ca-cert.pem").exists() {
            continue;
        }
        let (root, out) = (root_dir.to_string_lossy(), ca.to_string_lossy());
        isthmus(
            binary,
            &[
                "ca",
                "intermediate",
                "--root-dir",
                &root,
                "--cluster",
                name,
                "--out",
                &out,
                "--trust-domain",
                trust_domain,
            ],
        )
        .await?;
    }
    Ok(root_cert)
}

fn write(path: PathBuf, content: &str) -> Result<(), HarnessError> {
    std::fs::write(&path, content).map_err(io("cannot write", path))
}

/// Everything a cluster needs on disk besides its CA.
pub struct ClusterFiles<'a> {
    pub spec: &'a ClusterSpec,
    pub block: Block,
    pub dir: &'a Path,
    pub trust_domain: &'a str,
    pub eastwest_advertised: SocketAddr,
    pub peers: Vec<render::Peer>,
    /// Part of every bootstrap token, unique to this federation.
    pub secret: &'a str,
}

pub fn write_cluster(f: &ClusterFiles<'_>) -> Result<PathBuf, HarnessError> {
    let config = f.dir.join("config");
    for d in [config.clone(), f.dir.join("data"), f.dir.join("logs")] {
        std::fs::create_dir_all(&d).map_err(io("cannot create", d))?;
    }
    match &f.spec.config {
        ConfigSource::Generate => {
            let mesh = render::mesh_config(&render::MeshInputs {
                cluster: f.spec,
                block: f.block,
                trust_domain: f.trust_domain,
                eastwest_advertised: f.eastwest_advertised,
                peers: f.peers.clone(),
            });
            write(config.join("mesh.yaml"), &mesh)?;
            write(
                config.join("workloads.yaml"),
                &render::workloads(f.spec, f.block),
            )?;
        }
        ConfigSource::Directory(src) => {
            let entries =
                std::fs::read_dir(src).map_err(io("cannot read config directory", src.clone()))?;
            for e in entries {
                let e = e.map_err(io("cannot read config directory", src.clone()))?;
                let p = e.path();
                if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                    let text = std::fs::read_to_string(&p).map_err(io("cannot read", p.clone()))?;
                    write(config.join(e.file_name()), &text)?;
                }
            }
        }
        ConfigSource::Files(files) => {
            for (name, text) in files {
                write(config.join(name), text)?;
            }
        }
    }
    for (name, text) in &f.spec.extra_config {
        write(config.join(name), text)?;
    }
    let (tokens, per_workload) = render::tokens(f.spec, f.secret);
    write(f.dir.join("tokens"), &tokens)?;
    for (workload, token) in per_workload {
        write(f.dir.join(format!("token-{workload}")), &token)?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocated_blocks_are_consecutive_and_distinct_across_calls() {
        let a = allocate_blocks(3).unwrap();
        let b = allocate_blocks(3).unwrap();
        assert_eq!(a[1].octet, a[0].octet + 1);
        assert_eq!(a[2].octet, a[0].octet + 2);
        assert!(a.iter().all(|x| b.iter().all(|y| x != y)), "{a:?} {b:?}");
    }
}
