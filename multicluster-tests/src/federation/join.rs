//! Growing a running federation the way an operator does: a join token
//! made on a member (`isthmus federation token create`), a new cluster with
//! an intermediate of the same root and an empty data directory, started
//! with `isthmus control --join-token-file`, while the others keep serving.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cluster::{Cluster, Launch};
use crate::error::{io, HarnessError};
use crate::faultproxy::FaultProxy;
use crate::process::Managed;
use crate::setup::{self, ClusterFiles};
use crate::spec::{Block, ClusterSpec, ConfigSource};

use super::Federation;

/// One member as `isthmus federation status -o json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// `voter`, `learner` or `witness`.
    pub role: String,
}

/// What `isthmus federation status -o json` says through one control plane.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub role: String,
    pub leader_name: String,
    pub members: Vec<Member>,
}

impl StatusReport {
    pub fn from_json(v: &Value) -> StatusReport {
        let members = v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| Member {
                        name: m["name"].as_str().unwrap_or("").to_string(),
                        role: m["role"].as_str().unwrap_or("").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        StatusReport {
            role: v["role"].as_str().unwrap_or("").to_string(),
            leader_name: v["leader_name"].as_str().unwrap_or("").to_string(),
            members,
        }
    }

    pub fn role_of(&self, name: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.role.as_str())
    }
}

async fn run(binary: &Path, args: &[&str]) -> Result<String, HarnessError> {
    let out = tokio::process::Command::new(binary)
        .args(args)
        .output()
        .await
        .map_err(io("cannot run", binary))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Spec(format!(
            "`isthmus {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Federation {
    /// A join token naming `seeds` (running clusters) as the operator makes
    /// it: `isthmus federation token create`.
    pub async fn join_token(&self, seeds: &[&str]) -> Result<String, HarnessError> {
        let mut args: Vec<String> = vec![
            "federation".into(),
            "token".into(),
            "create".into(),
            "--trust-domain".into(),
            self.launch.trust_domain.clone(),
            "--root-cert".into(),
            self.launch.root_cert.to_string_lossy().into_owned(),
        ];
        for s in seeds {
            let c = self.cluster(s)?;
            args.push("--seed".into());
            args.push(format!("{s}={}", c.block.federation()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(run(&self.launch.binary, &args).await?.trim().to_string())
    }

    /// Starts a new cluster that joins the running federation through
    /// `seeds` with a join token: its own loopback block and intermediate,
    /// a MeshConfig without peers, an empty data directory. Returns once
    /// every process is spawned; the join itself happens in the control
    /// plane (see [`Federation::federation_status`] to watch it).
    pub async fn join_cluster(
        &mut self,
        spec: ClusterSpec,
        seeds: &[&str],
    ) -> Result<(), HarnessError> {
        if self.clusters.iter().any(|c| c.spec.name == spec.name) {
            return Err(HarnessError::Spec(format!(
                "cluster {} is already running",
                spec.name
            )));
        }
        if !matches!(spec.config, ConfigSource::Generate) || spec.wan_proxy {
            return Err(HarnessError::Spec(
                "a joining cluster needs generated config and no WAN proxy".into(),
            ));
        }
        if !self.links.is_empty() {
            return Err(HarnessError::Spec(
                "joining a federation started with `federation_links` is not supported (the new links would need proxies)".into(),
            ));
        }
        let token = self.join_token(seeds).await?;
        let block = setup::allocate_blocks(1)?
            .pop()
            .ok_or(HarnessError::NoFreeBlock(1))?;
        let dir = self.root.join(&spec.name);
        std::fs::create_dir_all(&dir).map_err(io("cannot create", dir.clone()))?;
        setup::pki(
            &self.launch.binary,
            &self.root.join("root"),
            &[(spec.name.clone(), dir.clone())],
            &self.launch.trust_domain,
        )
        .await?;
        let secret = format!("{:016x}", rand::random::<u64>());
        let config_dir = setup::write_cluster(&ClusterFiles {
            spec: &spec,
            block,
            dir: &dir,
            trust_domain: &self.launch.trust_domain,
            eastwest_advertised: block.eastwest(),
            // The token's seeds are all it needs; membership comes from Raft.
            peers: Vec::new(),
            secret: &secret,
        })?;
        if spec.ingress {
            crate::ingress::write_token(&dir, &spec, &secret)?;
        }
        crate::tunnel::write_eastwest_token(&dir, &spec, &secret)?;
        let token_file = dir.join("join-token");
        std::fs::write(&token_file, &token).map_err(io("cannot write", token_file.clone()))?;
        let control = Managed::start(
            Cluster::control_spec(&spec, block, &dir, &self.launch)
                .arg("--join-token-file")
                .arg(&token_file),
        )?;
        let cluster =
            start_data_plane(spec, block, dir, config_dir, control, None, &self.launch).await?;
        self.clusters.push(cluster);
        Ok(())
    }

    /// `isthmus federation status -o json` against `observer`'s admin port.
    pub async fn federation_status(&self, observer: &str) -> Result<StatusReport, String> {
        let admin = format!(
            "http://{}",
            self.cluster(observer)
                .map_err(|e| e.to_string())?
                .block
                .control_admin()
        );
        let out = run(
            &self.launch.binary,
            &["federation", "status", "--admin", &admin, "-o", "json"],
        )
        .await
        .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&out)
            .map_err(|e| format!("status of {observer} is not JSON ({e}): {out}"))?;
        Ok(StatusReport::from_json(&v))
    }
}

/// Starts a cluster's east-west gateway, applications, sidecars and ingress
/// once its control plane runs.
pub(super) async fn start_data_plane(
    c: ClusterSpec,
    block: Block,
    dir: PathBuf,
    config_dir: PathBuf,
    control: Managed,
    wan: Option<FaultProxy>,
    launch: &Launch,
) -> Result<Cluster, HarnessError> {
    let tunnel = crate::tunnel::start_link(&c, block).await?;
    let eastwest = Managed::start(Cluster::eastwest_spec(&c, block, &dir, launch))?;
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for k in 1..=c.workloads.len() {
        let k =
            u8::try_from(k).map_err(|_| HarnessError::Spec("more than 255 workloads".into()))?;
        let app = Cluster::app_spec(&c, block, &dir, launch, k).ok_or_else(|| {
            HarnessError::Spec(format!(
                "workload {} of {} names a service the cluster does not define",
                c.workloads[usize::from(k) - 1].name,
                c.name
            ))
        })?;
        apps.push(Managed::start(app)?);
        if let Some(s) = Cluster::sidecar_spec(&c, block, &dir, launch, k) {
            sidecars.push(Managed::start(s)?);
        }
    }
    let ingress = if c.ingress {
        Some(Managed::start(Cluster::ingress_spec(
            &c, block, &dir, launch,
        ))?)
    } else {
        None
    };
    Ok(Cluster {
        spec: c,
        block,
        dir,
        config_dir,
        control,
        eastwest,
        apps,
        sidecars,
        wan,
        tunnel,
        ingress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_report_reads_the_cli_json() {
        let v: Value = serde_json::from_str(
            r#"{"node":1,"name":"us-east","role":"Leader","leader":1,"leader_name":"us-east",
                "term":2,"commit":9,"applied":9,"last_index":9,"revision":4,
                "members":[{"id":1,"name":"us-east","role":"voter","lag":0,"replication":"Replicate"},
                           {"id":7,"name":"us-north","role":"learner","lag":3,"replication":"Probe"}]}"#,
        )
        .unwrap();
        let s = StatusReport::from_json(&v);
        assert_eq!(s.role, "Leader");
        assert_eq!(s.leader_name, "us-east");
        assert_eq!(s.role_of("us-north"), Some("learner"));
        assert_eq!(s.role_of("nope"), None);
    }
}
