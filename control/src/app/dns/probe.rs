//! Readiness of this cluster's own ingress gateways, published through the
//! registry. A gateway opens its ingress listeners only once it has a
//! complete configuration, so a TCP connect that succeeds means "ready to
//! take traffic". The ready addresses replace `ClusterInfo.ingress` in the
//! registry (re-registering is idempotent and keeps everything else), so
//! every control plane answers from the same readiness.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::Handle;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use super::settings::{self, ProbePlan};
use crate::store::ConfigSnapshot;

/// Consecutive failed connects before an address counts as down: one lost
/// SYN must not pull a cluster out of DNS.
const FAILURES_TO_DOWN: u32 = 2;

/// Per address: consecutive failures (0 = up).
#[derive(Debug, Default)]
pub struct Readiness {
    failures: BTreeMap<String, u32>,
}

impl Readiness {
    /// Records one round of results; returns the ready addresses in the
    /// configured order.
    pub fn record(&mut self, configured: &[String], results: &[bool]) -> Vec<String> {
        self.failures.retain(|k, _| configured.contains(k));
        let mut ready = Vec::new();
        for (addr, ok) in configured.iter().zip(results) {
            let f = self.failures.entry(addr.clone()).or_insert(0);
            *f = if *ok { 0 } else { f.saturating_add(1) };
            if *f < FAILURES_TO_DOWN {
                ready.push(addr.clone());
            }
        }
        ready
    }
}

async fn connects(addr: &str, timeout: Duration) -> bool {
    let Ok(sa) = addr.parse::<SocketAddr>() else {
        // Not an ip:port (a bare IP or a name): nothing to connect to; it
        // counts as ready, as without probing.
        return true;
    };
    matches!(
        tokio::time::timeout(timeout, TcpStream::connect(sa)).await,
        Ok(Ok(_))
    )
}

fn current(config: &ConfigSnapshot) -> (Vec<String>, Option<ProbePlan>) {
    let configured = config
        .mesh_config()
        .and_then(|m| m.spec.gateways.as_ref())
        .map(|g| g.ingress.clone())
        .unwrap_or_default();
    let probe = match settings::plan(config) {
        Ok(Some(p)) => Some(p.probe),
        _ => None,
    };
    (configured, probe)
}

pub async fn run(config: watch::Receiver<Arc<ConfigSnapshot>>, handle: Handle, cluster_id: String) {
    let mut readiness = Readiness::default();
    let mut last_probe = ProbePlan::default();
    loop {
        let snap = config.borrow().clone();
        let (configured, probe) = current(&snap);
        let probe = match probe {
            Some(p) => {
                last_probe = p;
                p
            }
            // DNS off (or its settings broken): nothing to publish.
            None => {
                tokio::time::sleep(last_probe.interval).await;
                continue;
            }
        };
        let ready = if probe.enabled {
            let results =
                futures::future::join_all(configured.iter().map(|a| connects(a, probe.timeout)))
                    .await;
            readiness.record(&configured, &results)
        } else {
            configured.clone()
        };
        let registry = handle.snapshot_stale();
        // Only once the exporter registered this cluster: it owns the rest
        // of the ClusterInfo.
        if let Some(info) = registry.clusters.get(&cluster_id) {
            if info.ingress != ready {
                let mut next = info.clone();
                next.ingress = ready.clone();
                match handle.register_cluster(next).await {
                    Ok(_) => {
                        info!(ready = ?ready, configured = ?configured, "published ingress gateway readiness")
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot publish ingress gateway readiness yet; retrying")
                    }
                }
            }
        }
        tokio::time::sleep(probe.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_is_tolerated_two_take_the_address_out_one_success_brings_it_back() {
        let mut r = Readiness::default();
        let cfg = vec!["10.0.0.1:80".to_string(), "10.0.0.2:80".to_string()];
        assert_eq!(r.record(&cfg, &[true, true]), cfg);
        assert_eq!(r.record(&cfg, &[true, false]), cfg);
        assert_eq!(r.record(&cfg, &[true, false]), vec![cfg[0].clone()]);
        assert_eq!(r.record(&cfg, &[true, true]), cfg);
        // Addresses removed from the configuration are forgotten.
        let one = vec![cfg[0].clone()];
        assert_eq!(r.record(&one, &[false]), one);
        assert_eq!(r.failures.len(), 1);
    }
}
