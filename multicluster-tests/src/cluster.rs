//! One running cluster: its control plane, east-west gateway, and for each
//! workload an echo application and its sidecar, all `isthmus` processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::HarnessError;
use crate::faultproxy::FaultProxy;
use crate::process::{Managed, ProcessError, Spec};
use crate::spec::{Block, ClusterSpec, Timing};

/// Which process of a cluster a fault control acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Control,
    EastWest,
    /// A workload's application (by workload name).
    App(String),
    /// A workload's sidecar (by workload name).
    Sidecar(String),
    /// The ingress gateway (`ClusterSpec::ingress`).
    Ingress,
}

/// Everything needed to (re)start a cluster's processes.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    pub trust_domain: String,
    pub root_cert: PathBuf,
    pub timing: Timing,
    pub log_filter: String,
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub block: Block,
    /// This cluster's state: CA files, config, data, logs.
    pub dir: PathBuf,
    pub config_dir: PathBuf,
    pub(crate) control: Managed,
    pub(crate) eastwest: Managed,
    pub(crate) apps: Vec<Managed>,
    pub(crate) sidecars: Vec<Managed>,
    pub(crate) wan: Option<FaultProxy>,
    /// The UDP link in front of the east-west gateway's QUIC tunnel.
    pub(crate) tunnel: Option<crate::udpproxy::UdpFaultProxy>,
    pub(crate) ingress: Option<Managed>,
}

fn durations(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Cluster {
    pub fn log_dir(dir: &Path) -> PathBuf {
        dir.join("logs")
    }

    pub(crate) fn control_spec(spec: &ClusterSpec, block: Block, dir: &Path, l: &Launch) -> Spec {
        Self::isthmus(format!("{}-control", spec.name), dir, l)
            .arg("control")
            .arg("--config-dir")
            .arg(dir.join("config"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--grpc-addr")
            .arg(block.grpc().to_string())
            .arg("--plaintext-xds-addr")
            .arg(block.plaintext_xds().to_string())
            .arg("--admin-addr")
            .arg(block.control_admin().to_string())
            .arg("--bootstrap-tokens")
            .arg(dir.join("tokens"))
            .arg("--raft-tick")
            .arg(durations(l.timing.raft_tick))
            .arg("--lease-renew")
            .arg(durations(l.timing.lease_renew))
            .arg("--lease-ttl")
            .arg(durations(l.timing.lease_ttl))
    }

    /// `isthmus --log FILTER` with its log file in the cluster's log dir;
    /// every process of a cluster starts from this.
    fn isthmus(name: String, dir: &Path, l: &Launch) -> Spec {
        Spec::new(name, &l.binary, &Self::log_dir(dir))
            .arg("--log")
            .arg(&l.log_filter)
    }

    pub(crate) fn eastwest_spec(spec: &ClusterSpec, block: Block, dir: &Path, l: &Launch) -> Spec {
        let s = Self::isthmus(format!("{}-east-west", spec.name), dir, l)
            .args(["gateway", "--role", "east-west", "--xds"])
            .arg(format!("https://{}", block.grpc()));
        Self::eastwest_identity_args(s, spec, block, dir, l)
            .arg("--ip")
            .arg(block.eastwest_ip().to_string())
            .arg("--cluster-id")
            .arg(&spec.name)
            .arg("--network")
            .arg(&spec.network)
            .arg("--locality")
            .arg(format!("{}/{}", spec.region, spec.zone))
            .arg("--admin")
            .arg(block.eastwest_admin().to_string())
            .arg("--trust-domain")
            .arg(&l.trust_domain)
    }

    pub(crate) fn app_spec(
        spec: &ClusterSpec,
        block: Block,
        dir: &Path,
        l: &Launch,
        k: u8,
    ) -> Option<Spec> {
        let w = spec.workloads.get(usize::from(k) - 1)?;
        let port = spec.service_spec(&w.service)?.port;
        let zone = w.zone.clone().unwrap_or_else(|| spec.zone.clone());
        let app = Self::isthmus(format!("{}-{}-app", spec.name, w.name), dir, l)
            .args(["workload", "echo", "--listen"])
            .arg(SocketAddr::new(block.app_ip(k), port).to_string())
            .arg("--service")
            .arg(&w.service)
            .arg("--cluster")
            .arg(&spec.name)
            .arg("--zone")
            .arg(zone)
            .arg("--version")
            .arg(&w.version);
        Some(match &w.calls {
            // Through its own sidecar's outbound listener for that port.
            Some((service, port)) => app
                .arg("--call")
                .arg(SocketAddr::new(block.outbound_ip(k), *port).to_string())
                .arg("--call-host")
                .arg(service),
            None => app,
        })
    }

    pub(crate) fn sidecar_spec(
        spec: &ClusterSpec,
        block: Block,
        dir: &Path,
        l: &Launch,
        k: u8,
    ) -> Option<Spec> {
        let w = spec.workloads.get(usize::from(k) - 1)?;
        let ns = spec
            .service_spec(&w.service)
            .map(|s| s.namespace.clone())
            .unwrap_or_else(|| "default".to_string());
        let zone = w.zone.clone().unwrap_or_else(|| spec.zone.clone());
        Some(
            Self::isthmus(format!("{}-{}-sidecar", spec.name, w.name), dir, l)
                .args(["gateway", "--role", "sidecar", "--xds"])
                .arg(format!("https://{}", block.grpc()))
                .arg("--ca")
                .arg(block.grpc().to_string())
                .arg("--root-cert")
                .arg(&l.root_cert)
                .arg("--token-file")
                .arg(dir.join(format!("token-{}", w.name)))
                .arg("--trust-domain")
                .arg(&l.trust_domain)
                .arg("--ip")
                .arg(block.workload_ip(k).to_string())
                .arg("--pod")
                .arg(&w.name)
                .arg("--namespace")
                .arg(ns)
                .arg("--service-account")
                .arg(&w.service_account)
                .arg("--cluster-id")
                .arg(&spec.name)
                .arg("--network")
                .arg(&spec.network)
                .arg("--locality")
                .arg(format!("{}/{}", spec.region, zone))
                .arg("--label")
                .arg(format!("app={}", w.service))
                .arg("--label")
                .arg(format!("version={}", w.version))
                .arg("--admin")
                .arg(block.workload_admin(k).to_string())
                .arg("--app-address")
                .arg(block.app_ip(k).to_string())
                .arg("--outbound-bind")
                .arg(block.outbound_ip(k).to_string())
                .arg("--drain-time")
                .arg("1s")
                .args(&spec.sidecar_args),
        )
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The control plane's process id while it runs (benchmarks read its
    /// CPU time and memory from /proc).
    pub fn control_pid(&self) -> Option<u32> {
        self.control.pid()
    }

    /// The admin address of every proxy of the cluster that can become
    /// ready (gateway first). An east-west gateway of a cluster exporting
    /// nothing gets no listeners and stays "waiting for the first complete
    /// configuration", so it is left out.
    pub fn proxy_admins(&self) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        if self.spec.services.iter().any(|s| s.export) {
            v.push(self.block.eastwest_admin());
        }
        for k in 1..=self.sidecars.len() {
            v.push(
                self.block
                    .workload_admin(u8::try_from(k).unwrap_or(u8::MAX)),
            );
        }
        if self.ingress.is_some() {
            v.push(self.block.ingress_admin());
        }
        v
    }

    fn index(&self, workload: &str) -> Result<usize, HarnessError> {
        self.spec
            .workloads
            .iter()
            .position(|w| w.name == workload)
            .ok_or_else(|| HarnessError::NoSuch {
                what: "workload",
                name: format!("{}/{workload}", self.spec.name),
            })
    }

    fn part(&mut self, part: &Part) -> Result<&mut Managed, HarnessError> {
        Ok(match part {
            Part::Control => &mut self.control,
            Part::EastWest => &mut self.eastwest,
            Part::App(w) => {
                let i = self.index(w)?;
                &mut self.apps[i]
            }
            Part::Sidecar(w) => {
                let i = self.index(w)?;
                &mut self.sidecars[i]
            }
            Part::Ingress => self.ingress.as_mut().ok_or_else(|| HarnessError::NoSuch {
                what: "ingress gateway",
                name: self.spec.name.clone(),
            })?,
        })
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Managed> {
        std::iter::once(&mut self.control)
            .chain(std::iter::once(&mut self.eastwest))
            .chain(self.apps.iter_mut())
            .chain(self.sidecars.iter_mut())
            .chain(self.ingress.iter_mut())
    }

    pub async fn kill_part(&mut self, part: &Part) -> Result<(), HarnessError> {
        self.part(part)?.kill().await;
        Ok(())
    }

    pub async fn restart_part(&mut self, part: &Part) -> Result<(), HarnessError> {
        Ok(self.part(part)?.restart().await?)
    }

    pub async fn restart_gracefully(
        &mut self,
        part: &Part,
        grace: std::time::Duration,
    ) -> Result<(), HarnessError> {
        let p = self.part(part)?;
        p.stop(grace).await?;
        Ok(p.restart().await?)
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause_part(&mut self, part: &Part) -> Result<(), HarnessError> {
        Ok(self.part(part)?.pause()?)
    }

    pub fn resume_part(&mut self, part: &Part) -> Result<(), HarnessError> {
        Ok(self.part(part)?.resume()?)
    }

    /// kill -9 of every process of the cluster at the same instant, as a
    /// lost data centre; the WAN proxy (the "network") cuts too.
    pub async fn kill(&mut self) {
        for p in self.all() {
            p.start_kill();
        }
        for p in self.all() {
            p.kill().await;
        }
    }

    /// Starts every process again (control plane first), keeping the data
    /// directory, so the control plane recovers its federation state.
    pub async fn restart(&mut self) -> Result<(), ProcessError> {
        self.control.restart().await?;
        self.eastwest.restart().await?;
        for p in self.apps.iter_mut() {
            p.restart().await?;
        }
        for p in self.sidecars.iter_mut() {
            p.restart().await?;
        }
        if let Some(p) = self.ingress.as_mut() {
            p.restart().await?;
        }
        Ok(())
    }

    pub fn wan(&self) -> Option<&FaultProxy> {
        self.wan.as_ref()
    }

    /// The last lines of every log of the cluster, for failure messages.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        let ps = std::iter::once(&self.control)
            .chain(std::iter::once(&self.eastwest))
            .chain(self.sidecars.iter())
            .chain(self.ingress.iter());
        for p in ps {
            out.push_str(&format!(
                "--- {} ({})\n{}\n",
                p.name(),
                p.log_path().display(),
                p.log_tail(n)
            ));
        }
        out
    }
}
