//! A federation witness (`isthmus federation witness`): a Raft voter with no
//! cluster and no registry data, so two clusters keep a quorum when either
//! is lost (active/passive disaster recovery).

use std::net::SocketAddr;
use std::path::Path;

use crate::cluster::{Cluster, Launch};
use crate::error::{io, HarnessError};
use crate::process::{Managed, Spec};
use crate::render::Peer;

/// Where and as whom the witness runs.
#[derive(Debug, Clone)]
pub struct WitnessPlan {
    pub name: String,
    pub listen: SocketAddr,
}

impl WitnessPlan {
    /// The witness as a federation peer of every cluster.
    pub fn peer(&self) -> Peer {
        Peer {
            id: self.name.clone(),
            address: self.listen,
        }
    }
}

/// Makes the witness's intermediate (`isthmus ca intermediate --cluster
/// NAME`, the node certificate authenticates it to the clusters) and starts
/// it; the peers are the clusters' federation addresses.
pub async fn start(
    plan: &WitnessPlan,
    dir: &Path,
    root_dir: &Path,
    l: &Launch,
    peers: &[Peer],
) -> Result<Managed, HarnessError> {
    for d in [dir.join("data"), Cluster::log_dir(dir)] {
        std::fs::create_dir_all(&d).map_err(io("cannot create", d))?;
    }
    let ca = dir.join("ca");
    if !ca.join("ca-cert.pem").exists() {
        let out = tokio::process::Command::new(&l.binary)
            .args(["ca", "intermediate", "--root-dir"])
            .arg(root_dir)
            .args(["--cluster", &plan.name, "--out"])
            .arg(&ca)
            .args(["--trust-domain", &l.trust_domain])
            .output()
            .await
            .map_err(io("cannot run", l.binary.clone()))?;
        if !out.status.success() {
            return Err(HarnessError::Ca {
                step: format!("ca intermediate --cluster {}", plan.name),
                output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    let mut spec = Spec::new(
        format!("{}-witness", plan.name),
        &l.binary,
        &Cluster::log_dir(dir),
    )
    .arg("--log")
    .arg(&l.log_filter)
    .args(["federation", "witness", "--name", &plan.name, "--ca-dir"])
    .arg(&ca)
    .arg("--data-dir")
    .arg(dir.join("data"))
    .arg("--listen")
    .arg(plan.listen.to_string())
    .arg("--trust-domain")
    .arg(&l.trust_domain);
    for p in peers {
        spec = spec.arg("--peer").arg(format!("{}={}", p.id, p.address));
    }
    Ok(Managed::start(spec)?)
}
