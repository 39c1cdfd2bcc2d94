//! N clusters running on loopback, started from a [`FederationSpec`], with
//! fault controls. Every process is killed when the `Federation` is dropped,
//! also when a test panics (its state directory is then kept for the logs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{Cluster, Launch, Part};
use crate::error::{io, HarnessError};
use crate::faultproxy::{FaultProxy, Faults};
use crate::load::LoadConfig;
use crate::process::Managed;
use crate::render::Peer;
use crate::setup::{self, ClusterFiles};
use crate::spec::{Block, ConfigSource, FederationSpec, EASTWEST_PORT, FEDERATION_PORT};
use crate::udpproxy::UdpFaultProxy;
use crate::witness::WitnessPlan;

pub mod join;

/// One direction of a federation peer link, through a UDP fault proxy.
pub struct Link {
    pub from: String,
    pub to: String,
    pub proxy: UdpFaultProxy,
}

pub struct Federation {
    // Clusters first: fields drop in order, processes before their directory.
    clusters: Vec<Cluster>,
    links: Vec<Link>,
    witness: Option<Managed>,
    launch: Launch,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Federation {
    /// Builds the `isthmus` binary if needed (see [`crate::binary`]) and starts.
    pub async fn start_for_tests(spec: FederationSpec) -> Result<Federation, HarnessError> {
        let bin = tokio::task::spawn_blocking(crate::binary::isthmus_for_tests)
            .await
            .map_err(|e| HarnessError::Spec(format!("binary lookup panicked: {e}")))??;
        Self::start(spec, bin).await
    }

    /// Prepares every cluster on disk and starts all processes; returns once
    /// they are spawned (see [`Federation::wait_ready`]).
    pub async fn start(spec: FederationSpec, binary: PathBuf) -> Result<Federation, HarnessError> {
        let n = spec.clusters.len();
        if n == 0 {
            return Err(HarnessError::Spec("no clusters".into()));
        }
        let blocks: Vec<Block> = match &spec.blocks {
            Some(octets) if octets.len() == n => {
                octets.iter().map(|&octet| Block { octet }).collect()
            }
            Some(octets) => {
                return Err(HarnessError::Spec(format!(
                    "{} blocks for {n} clusters",
                    octets.len()
                )))
            }
            None => {
                if spec
                    .clusters
                    .iter()
                    .any(|c| !matches!(c.config, ConfigSource::Generate))
                {
                    return Err(HarnessError::Spec(
                        "clusters with their own config files need fixed blocks (their addresses are in the files)".into(),
                    ));
                }
                setup::allocate_blocks(n)?
            }
        };
        let (tmp, root) = match &spec.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io("cannot create", d.clone()))?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("isthmus-federation-")
                    .tempdir()
                    .map_err(io(
                        "cannot create a temporary directory in",
                        std::env::temp_dir(),
                    ))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let dirs: Vec<(String, PathBuf)> = spec
            .clusters
            .iter()
            .map(|c| (c.name.clone(), root.join(&c.name)))
            .collect();
        for (_, d) in &dirs {
            std::fs::create_dir_all(d).map_err(io("cannot create", d.clone()))?;
        }
        let root_cert = setup::pki(&binary, &root.join("root"), &dirs, &spec.trust_domain).await?;
        let launch = Launch {
            binary,
            trust_domain: spec.trust_domain.clone(),
            root_cert,
            timing: spec.timing.clone(),
            log_filter: spec.log_filter.clone(),
        };
        let secret = format!("{:016x}", rand::random::<u64>());

        let mut links = Vec::new();
        if spec.federation_links {
            for (i, from) in spec.clusters.iter().enumerate() {
                for (j, to) in spec.clusters.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    let n = u8::try_from(1 + j)
                        .map_err(|_| HarnessError::Spec("too many clusters".into()))?;
                    let listen = SocketAddr::new(blocks[i].spare_ip(n), FEDERATION_PORT);
                    links.push(Link {
                        from: from.name.clone(),
                        to: to.name.clone(),
                        proxy: UdpFaultProxy::start(listen, blocks[j].federation()).await?,
                    });
                }
            }
        }
        let witness_plan = spec.witness.as_ref().map(|name| WitnessPlan {
            name: name.clone(),
            listen: blocks[0].witness(),
        });
        let mut clusters = Vec::with_capacity(n);
        for (i, c) in spec.clusters.iter().enumerate() {
            let block = blocks[i];
            let dir = &dirs[i].1;
            let wan = if c.wan_proxy {
                let listen = SocketAddr::new(block.spare_ip(0), EASTWEST_PORT);
                Some(FaultProxy::start(listen, block.eastwest()).await?)
            } else {
                None
            };
            let mut peers: Vec<Peer> = spec
                .clusters
                .iter()
                .zip(&blocks)
                .filter(|(other, _)| other.name != c.name)
                .map(|(other, b)| Peer {
                    id: other.name.clone(),
                    address: links
                        .iter()
                        .find(|l| l.from == c.name && l.to == other.name)
                        .map(|l| l.proxy.addr())
                        .unwrap_or_else(|| b.federation()),
                })
                .collect();
            peers.extend(witness_plan.as_ref().map(WitnessPlan::peer));
            let config_dir = setup::write_cluster(&ClusterFiles {
                spec: c,
                block,
                dir,
                trust_domain: &spec.trust_domain,
                eastwest_advertised: wan
                    .as_ref()
                    .map(FaultProxy::addr)
                    .unwrap_or_else(|| block.eastwest()),
                peers,
                secret: &secret,
            })?;
            if c.ingress {
                crate::ingress::write_token(dir, c, &secret)?;
            }
            crate::tunnel::write_eastwest_token(dir, c, &secret)?;
            // Control planes of all clusters start before any proxy, so the
            // federation forms while the proxies fetch their certificates.
            let control = Managed::start(Cluster::control_spec(c, block, dir, &launch))?;
            clusters.push((c.clone(), block, dir.clone(), config_dir, control, wan));
        }
        let witness = match &witness_plan {
            Some(plan) => {
                let peers: Vec<Peer> = spec
                    .clusters
                    .iter()
                    .zip(&blocks)
                    .map(|(c, b)| Peer {
                        id: c.name.clone(),
                        address: b.federation(),
                    })
                    .collect();
                let dir = root.join(&plan.name);
                Some(crate::witness::start(plan, &dir, &root.join("root"), &launch, &peers).await?)
            }
            None => None,
        };
        let mut running = Vec::with_capacity(n);
        for (c, block, dir, config_dir, control, wan) in clusters {
            running.push(
                join::start_data_plane(c, block, dir, config_dir, control, wan, &launch).await?,
            );
        }
        Ok(Federation {
            clusters: running,
            links,
            witness,
            launch,
            root,
            _tmp: tmp,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn binary(&self) -> &Path {
        &self.launch.binary
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    pub fn cluster(&self, name: &str) -> Result<&Cluster, HarnessError> {
        self.clusters
            .iter()
            .find(|c| c.spec.name == name)
            .ok_or_else(|| HarnessError::NoSuch {
                what: "cluster",
                name: name.to_string(),
            })
    }

    pub fn cluster_mut(&mut self, name: &str) -> Result<&mut Cluster, HarnessError> {
        self.clusters
            .iter_mut()
            .find(|c| c.spec.name == name)
            .ok_or_else(|| HarnessError::NoSuch {
                what: "cluster",
                name: name.to_string(),
            })
    }

    /// The sidecar outbound listener through which `workload` of `cluster`
    /// calls `service` (found in any cluster's spec).
    pub fn outbound(
        &self,
        cluster: &str,
        workload: &str,
        service: &str,
    ) -> Result<SocketAddr, HarnessError> {
        let c = self.cluster(cluster)?;
        let k = c
            .spec
            .workload_index(workload)
            .ok_or_else(|| HarnessError::NoSuch {
                what: "workload",
                name: format!("{cluster}/{workload}"),
            })?;
        let port = self
            .clusters
            .iter()
            .find_map(|c| c.spec.service_spec(service).map(|s| s.port))
            .ok_or_else(|| HarnessError::NoSuch {
                what: "service",
                name: service.to_string(),
            })?;
        Ok(SocketAddr::new(c.block.outbound_ip(k), port))
    }

    /// Load from `workload` in `cluster` to `service`, at `rate` req/s.
    pub fn load(
        &self,
        cluster: &str,
        workload: &str,
        service: &str,
        rate: f64,
    ) -> Result<LoadConfig, HarnessError> {
        let target = self.outbound(cluster, workload, service)?;
        Ok(LoadConfig::new(target, service, rate))
    }

    pub async fn kill(&mut self, cluster: &str, part: &Part) -> Result<(), HarnessError> {
        self.cluster_mut(cluster)?.kill_part(part).await
    }

    pub async fn restart(&mut self, cluster: &str, part: &Part) -> Result<(), HarnessError> {
        self.cluster_mut(cluster)?.restart_part(part).await
    }

    /// SIGTERM (SIGKILL after `grace`), then start again: one step of a
    /// rolling restart.
    pub async fn restart_gracefully(
        &mut self,
        cluster: &str,
        part: &Part,
        grace: Duration,
    ) -> Result<(), HarnessError> {
        self.cluster_mut(cluster)?
            .restart_gracefully(part, grace)
            .await
    }

    /// Every process of the cluster dies at once (kill -9).
    pub async fn kill_cluster(&mut self, cluster: &str) -> Result<(), HarnessError> {
        self.cluster_mut(cluster)?.kill().await;
        Ok(())
    }

    pub async fn restart_cluster(&mut self, cluster: &str) -> Result<(), HarnessError> {
        Ok(self.cluster_mut(cluster)?.restart().await?)
    }

    /// Isolates a cluster's control plane by freezing it (SIGSTOP): its
    /// peers see a silent node, as in a partition, and its proxies keep
    /// their last configuration. The cheap variant: the frozen control plane
    /// also stops answering its own proxies. For a real partition (the
    /// control plane keeps running) start with `federation_links` and use
    /// [`Federation::cut_links`]; network namespaces would need root.
    pub fn partition(&mut self, cluster: &str) -> Result<(), HarnessError> {
        self.cluster_mut(cluster)?.pause_part(&Part::Control)
    }

    pub fn heal(&mut self, cluster: &str) -> Result<(), HarnessError> {
        self.cluster_mut(cluster)?.resume_part(&Part::Control)
    }

    /// Cuts (`cut = true`) or restores every federation link to and from
    /// `cluster`: a real partition of its control plane, which keeps
    /// running and serving its own proxies. Needs `federation_links`.
    pub fn cut_links(&self, cluster: &str, cut: bool) -> Result<usize, HarnessError> {
        self.cluster(cluster)?;
        let mut n = 0;
        for l in self
            .links
            .iter()
            .filter(|l| l.from == cluster || l.to == cluster)
        {
            l.proxy.set(Faults {
                cut,
                ..Faults::default()
            });
            n += 1;
        }
        if n == 0 {
            return Err(HarnessError::Spec(
                "no federation links to cut: start with `federation_links = true`".into(),
            ));
        }
        Ok(n)
    }

    pub fn link(&self, from: &str, to: &str) -> Option<&UdpFaultProxy> {
        self.links
            .iter()
            .find(|l| l.from == from && l.to == to)
            .map(|l| &l.proxy)
    }

    /// Writes (or replaces) a config file of a cluster; its control plane
    /// watches the directory and applies the change.
    pub fn write_config(&self, cluster: &str, file: &str, yaml: &str) -> Result<(), HarnessError> {
        let path = self.cluster(cluster)?.config_dir.join(file);
        // Write then rename, so the watcher never reads half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, yaml).map_err(io("cannot write", tmp.clone()))?;
        std::fs::rename(&tmp, &path).map_err(io("cannot rename into", path))
    }

    pub fn remove_config(&self, cluster: &str, file: &str) -> Result<(), HarnessError> {
        let path = self.cluster(cluster)?.config_dir.join(file);
        std::fs::remove_file(&path).map_err(io("cannot remove", path))
    }

    /// The last lines of every process log, for failure messages.
    pub fn log_tails(&self, n: usize) -> String {
        self.clusters.iter().map(|c| c.log_tails(n)).collect()
    }

    /// A timed-out wait, with the logs that explain it.
    pub fn not_ready(&self, timeout: crate::wait::Timeout) -> HarnessError {
        HarnessError::NotReady {
            timeout,
            logs: self.log_tails(8),
        }
    }

    /// Kills everything now and waits for it (drop does the same without waiting).
    pub async fn shutdown(mut self) {
        for c in self.clusters.iter_mut() {
            c.resume_part(&Part::Control).ok();
            c.kill().await;
        }
        if let Some(w) = self.witness.as_mut() {
            w.kill().await;
        }
    }

    pub fn keep_state_on_panic(&mut self) -> Option<PathBuf> {
        self._tmp.take().map(|t| t.keep())
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.keep_state_on_panic() {
                eprintln!("federation state and logs kept in {}", dir.display());
            }
        }
    }
}

/// How long readiness waits allow by default; generous for a loaded 2-core box.
pub const READY_LIMIT: Duration = Duration::from_secs(30);
