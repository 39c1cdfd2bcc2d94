//! Global DNS (issue 12): this control plane serves the delegated zone of
//! the MeshConfig's `dns` section, answering each global hostname with the
//! ingress addresses of healthy clusters, from its own registry replica.
//!
//! Tasks, each owning its state:
//! - the server task owns the `(zone, view)` watch the DNS handler reads,
//!   rebuilds it on config and registry changes, and (re)binds the server
//!   when the listen addresses change; a bad configuration is logged with
//!   file:line and the last good zone keeps serving;
//! - the freshness task asks the registry majority once a second whether
//!   this replica is current (a linearizable read); when it cannot, answers
//!   continue from the last view and count as stale;
//! - the probe task connects to this cluster's own ingress gateways and
//!   publishes the ready ones as its `ClusterInfo.ingress`, so every
//!   control plane sees the same readiness through the registry.

pub mod probe;
pub mod settings;
pub mod status;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use isthmus_dns::{
    ClusterHealth, DnsMetrics, DnsServer, DnsServerConfig, HealthView, Serving, Zone,
};
use isthmus_federation::{Handle, RegistrySnapshot};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::AppError;
use crate::store::ConfigSnapshot;

pub use settings::{DnsSettings, Plan};

/// How often the freshness task checks with the registry majority.
const FRESHNESS_INTERVAL: Duration = Duration::from_secs(1);

/// An ingress address from the registry (`ip:port` or a bare IP); host
/// names cannot be answered with A/AAAA and are skipped.
fn ingress_ip(s: &str) -> Option<IpAddr> {
    s.parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| s.parse::<IpAddr>())
        .ok()
}

/// The health view of the registry replica: lease state from the log,
/// ingress readiness as each cluster published it.
pub fn health_view(snap: &RegistrySnapshot, stale: bool) -> HealthView {
    let clusters = snap
        .clusters
        .iter()
        .map(|(id, info)| {
            let lease_alive = snap.leases.get(id).is_some_and(|l| !l.expired);
            let mut ingress: Vec<IpAddr> =
                info.ingress.iter().filter_map(|s| ingress_ip(s)).collect();
            ingress.dedup();
            (
                id.clone(),
                ClusterHealth {
                    region: info.locality.region.clone(),
                    lease_alive,
                    ingress,
                },
            )
        })
        .collect();
    HealthView { clusters, stale }
}

/// Registers the DNS metrics and starts the tasks. When the first
/// configuration enables DNS, its addresses are bound before this returns,
/// so a port conflict fails start-up.
pub async fn start(
    first: &Arc<ConfigSnapshot>,
    config: watch::Receiver<Arc<ConfigSnapshot>>,
    handle: Handle,
    cluster_id: String,
    registry: &prometheus::Registry,
) -> Result<(), AppError> {
    let metrics = DnsMetrics::new(registry)?;
    let plan = match settings::plan(first) {
        Ok(p) => p,
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            return Err(AppError::Config(format!("global DNS: {}", text.join("; "))));
        }
    };
    let (stale_tx, stale_rx) = watch::channel(false);
    let mut task = ServerTask {
        metrics: metrics.clone(),
        serving: None,
        server: None,
        listen: Vec::new(),
        plan: None,
    };
    if let Some(plan) = plan {
        task.apply(plan, &handle.snapshot_stale(), false)
            .await
            .map_err(|e| AppError::Config(format!("global DNS: {e}")))?;
    }
    tokio::spawn(freshness(handle.clone(), stale_tx, metrics));
    tokio::spawn(probe::run(config.clone(), handle.clone(), cluster_id));
    tokio::spawn(task.run(first.version(), config, handle.watch_snapshot(), stale_rx));
    Ok(())
}

struct ServerTask {
    metrics: DnsMetrics,
    serving: Option<watch::Sender<Arc<Serving>>>,
    server: Option<DnsServer>,
    listen: Vec<SocketAddr>,
    plan: Option<Plan>,
}

impl ServerTask {
    /// Switches to `plan`: a new zone always, a new server only when the
    /// addresses changed.
    async fn apply(
        &mut self,
        plan: Plan,
        snap: &RegistrySnapshot,
        stale: bool,
    ) -> Result<(), String> {
        let zone = Arc::new(Zone::build(&plan.zone).map_err(|e| e.to_string())?);
        let serving = Arc::new(Serving {
            zone,
            view: Arc::new(health_view(snap, stale)),
        });
        if self.server.is_some() && self.listen == plan.listen {
            if let Some(tx) = &self.serving {
                tx.send_replace(serving);
            }
        } else {
            if let Some(old) = self.server.take() {
                old.stop().await;
            }
            let (tx, rx) = watch::channel(serving);
            let server = DnsServer::start(
                &DnsServerConfig::new(plan.listen.clone()),
                rx,
                self.metrics.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
            info!(zone = %plan.zone.origin, addrs = ?server.local_addrs(), hostnames = plan.zone.hostnames.len(), "global DNS serving");
            self.server = Some(server);
            self.serving = Some(tx);
            self.listen = plan.listen.clone();
        }
        self.plan = Some(plan);
        Ok(())
    }

    async fn off(&mut self) {
        if let Some(old) = self.server.take() {
            old.stop().await;
            info!("global DNS off: the MeshConfig has no dns section any more");
        }
        self.serving = None;
        self.listen.clear();
        self.plan = None;
    }

    fn refresh_view(&self, snap: &RegistrySnapshot, stale: bool) {
        if let Some(tx) = &self.serving {
            let view = health_view(snap, stale);
            let zone = tx.borrow().zone.clone();
            if *tx.borrow().view != view {
                tx.send_replace(Arc::new(Serving {
                    zone,
                    view: Arc::new(view),
                }));
            }
        }
    }

    async fn run(
        mut self,
        mut last_config: u64,
        mut config: watch::Receiver<Arc<ConfigSnapshot>>,
        mut registry: watch::Receiver<Arc<RegistrySnapshot>>,
        mut stale: watch::Receiver<bool>,
    ) {
        // The first snapshot is already applied; a newer one is handled at once.
        let mut pending = config.borrow_and_update().version() != last_config;
        loop {
            if !std::mem::take(&mut pending) {
                tokio::select! {
                    r = config.changed() => if r.is_err() { break; },
                    r = registry.changed() => if r.is_err() { break; },
                    r = stale.changed() => if r.is_err() { break; },
                }
            }
            let snap = registry.borrow_and_update().clone();
            let is_stale = *stale.borrow_and_update();
            let cfg = config.borrow_and_update().clone();
            if cfg.version() != last_config {
                last_config = cfg.version();
                match settings::plan(&cfg) {
                    Ok(None) => self.off().await,
                    Ok(Some(plan)) if self.plan.as_ref() == Some(&plan) => {}
                    Ok(Some(plan)) => {
                        if let Err(e) = self.apply(plan, &snap, is_stale).await {
                            error!(error = %e, "global DNS: cannot apply the new configuration; still serving the last good zone where possible");
                        }
                    }
                    Err(errors) => {
                        for e in errors {
                            error!(error = %e, "global DNS configuration rejected; keeping the last good zone");
                        }
                    }
                }
            }
            self.refresh_view(&snap, is_stale);
        }
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// Marks the view stale while the registry majority cannot confirm this
/// replica (partitioned minority, or no leader).
async fn freshness(handle: Handle, stale: watch::Sender<bool>, metrics: DnsMetrics) {
    let mut tick = tokio::time::interval(FRESHNESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = matches!(
            tokio::time::timeout(FRESHNESS_INTERVAL, handle.read_linearizable()).await,
            Ok(Ok(_))
        );
        let was = *stale.borrow();
        if was == ok {
            if ok {
                info!("global DNS: the registry majority is reachable again; answers are current");
            } else {
                warn!("global DNS: cannot reach the registry majority; answering from the last registry view (stale)");
            }
        }
        metrics.set_stale(!ok);
        stale.send_if_modified(|s| {
            let changed = *s == ok;
            *s = !ok;
            changed
        });
        if stale.is_closed() {
            return;
        }
    }
}
