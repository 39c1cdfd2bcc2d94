//! Control-plane metrics that are not counted where the events happen:
//! the federation's Raft and lease state, sampled from the node's status
//! and registry snapshot, and the CA's counters under istiod's
//! `citadel_server_*` names (derived at scrape time from
//! `isthmus_ca_csr_requests_total`, so the CA keeps one set of counters).

use std::collections::BTreeMap;
use std::time::Duration;

use isthmus_federation::{Handle, Role};
use isthmus_identity::CaMetrics;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use tracing::debug;

use super::federation::node_id;

/// How often the federation gauges are refreshed from the node.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// The CA's metrics, registered so that `/metrics` shows them under our
/// names and under istiod's.
pub fn ca_metrics(registry: &Registry) -> Result<CaMetrics, prometheus::Error> {
    let own = Registry::new();
    let metrics = CaMetrics::new(&own)?;
    registry.register(Box::new(CitadelNames::new(own)?))?;
    Ok(metrics)
}

/// istiod's CA counters computed from `isthmus_ca_csr_requests_total{outcome}`.
struct CitadelNames {
    source: Registry,
    source_desc: Desc,
    csr: IntCounter,
    issued: IntCounter,
    auth_failures: IntCounter,
    parse_errors: IntCounter,
    sign_errors: IntCounter,
}

const SOURCE: &str = "isthmus_ca_csr_requests_total";

impl CitadelNames {
    fn new(source: Registry) -> Result<CitadelNames, prometheus::Error> {
        let c = |name: &str, help: &str| IntCounter::new(name, help);
        Ok(CitadelNames {
            source,
            source_desc: Desc::new(
                SOURCE.to_string(),
                "Certificate signing requests by outcome (issued, unauthenticated, denied, rate_limited, invalid, failed).".to_string(),
                vec!["outcome".to_string()],
                Default::default(),
            )?,
            csr: c(
                "citadel_server_csr_count",
                "The number of CSRs received by Citadel server.",
            )?,
            issued: c(
                "citadel_server_success_cert_issuance_count",
                "The number of certificates issuances that have succeeded.",
            )?,
            auth_failures: c(
                "citadel_server_authentication_failure_count",
                "The number of authentication failures.",
            )?,
            parse_errors: c(
                "citadel_server_csr_parsing_err_count",
                "The number of errors occurred when parsing the CSR.",
            )?,
            sign_errors: c(
                "citadel_server_csr_sign_err_count",
                "The number of errors occurred when signing the CSR.",
            )?,
        })
    }

    fn aliases(&self) -> [(&IntCounter, &'static [&'static str]); 5] {
        [
            (&self.csr, &[]),
            (&self.issued, &["issued"]),
            (&self.auth_failures, &["unauthenticated", "denied"]),
            (&self.parse_errors, &["invalid"]),
            (&self.sign_errors, &["failed"]),
        ]
    }
}

impl Collector for CitadelNames {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = vec![&self.source_desc];
        for (c, _) in self.aliases() {
            d.extend(c.desc());
        }
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let families = self.source.gather();
        let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
        for f in families.iter().filter(|f| f.name() == SOURCE) {
            for m in f.get_metric() {
                let outcome = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "outcome")
                    .map(|l| l.value().to_string())
                    .unwrap_or_default();
                // Counter values are whole numbers stored as f64.
                *by_outcome.entry(outcome).or_default() += m.get_counter().get_value() as u64;
            }
        }
        let mut out = families;
        for (counter, outcomes) in self.aliases() {
            let v: u64 = if outcomes.is_empty() {
                by_outcome.values().sum()
            } else {
                outcomes.iter().filter_map(|o| by_outcome.get(*o)).sum()
            };
            counter.reset();
            counter.inc_by(v);
            out.extend(counter.collect());
        }
        out
    }
}

/// Gauges of the federation as this node sees it.
#[derive(Clone)]
struct FederationGauges {
    state: IntGaugeVec,
    leader_known: IntGauge,
    peer_match: IntGaugeVec,
    peer_lag: IntGaugeVec,
    lease_expired: IntGaugeVec,
    cluster_endpoints: IntGaugeVec,
    clusters: IntGauge,
}

impl FederationGauges {
    fn new(r: &Registry) -> Result<FederationGauges, prometheus::Error> {
        let vec = |name: &str, help: &str, label: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label])?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let one = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(FederationGauges {
            state: vec(
                "isthmus_federation_raft_state",
                "1 for this node's current Raft role (leader, follower, candidate, precandidate), 0 for the others",
                "state",
            )?,
            leader_known: one(
                "isthmus_federation_leader_known",
                "1 when this node knows a federation leader",
            )?,
            peer_match: vec(
                "isthmus_federation_peer_match_index",
                "Highest log index known replicated on each peer (reported by the leader only)",
                "peer",
            )?,
            peer_lag: vec(
                "isthmus_federation_peer_lag_entries",
                "Log entries each peer is behind the leader (reported by the leader only)",
                "peer",
            )?,
            lease_expired: vec(
                "isthmus_federation_cluster_lease_expired",
                "1 when the cluster's registry lease expired (its endpoints are unavailable), 0 while it is renewed",
                "cluster",
            )?,
            cluster_endpoints: vec(
                "isthmus_federation_cluster_healthy_endpoints",
                "Healthy endpoints each member cluster publishes in the registry",
                "cluster",
            )?,
            clusters: one(
                "isthmus_federation_clusters",
                "Member clusters registered in the registry",
            )?,
        })
    }
}

/// Registers the federation gauges and keeps them current until the node
/// stops (its snapshot channel closes).
pub fn spawn_federation(handle: Handle, registry: &Registry) -> Result<(), prometheus::Error> {
    let g = FederationGauges::new(registry)?;
    tokio::spawn(async move {
        let mut snapshots = handle.watch_snapshot();
        let mut tick = tokio::time::interval(SAMPLE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => sample_status(&handle, &g).await,
                r = snapshots.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
            }
            let snap = snapshots.borrow_and_update().clone();
            sample_registry(&snap, &g);
        }
    });
    Ok(())
}

async fn sample_status(handle: &Handle, g: &FederationGauges) {
    let status = match handle.status().await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "federation status unavailable for metrics");
            return;
        }
    };
    for (role, name) in [
        (Role::Leader, "leader"),
        (Role::Follower, "follower"),
        (Role::Candidate, "candidate"),
        (Role::PreCandidate, "precandidate"),
    ] {
        g.state
            .with_label_values(&[name])
            .set(i64::from(status.role == role));
    }
    g.leader_known.set(i64::from(status.leader != 0));
    // Only the leader knows the peers' progress; followers export none
    // rather than stale numbers.
    g.peer_match.reset();
    g.peer_lag.reset();
    let names = peer_names(handle);
    for p in &status.peers {
        let peer = names
            .get(&p.id)
            .cloned()
            .unwrap_or_else(|| p.id.to_string());
        g.peer_match
            .with_label_values(&[&peer])
            .set(i64::try_from(p.match_index).unwrap_or(i64::MAX));
        g.peer_lag
            .with_label_values(&[&peer])
            .set(i64::try_from(p.lag).unwrap_or(i64::MAX));
    }
}

/// Raft node id → cluster id, for the clusters the registry knows.
fn peer_names(handle: &Handle) -> BTreeMap<u64, String> {
    handle
        .snapshot_stale()
        .clusters
        .keys()
        .map(|c| (node_id(c), c.clone()))
        .collect()
}

fn sample_registry(snap: &isthmus_federation::RegistrySnapshot, g: &FederationGauges) {
    g.clusters
        .set(i64::try_from(snap.clusters.len()).unwrap_or(i64::MAX));
    g.lease_expired.reset();
    for (cluster, lease) in &snap.leases {
        g.lease_expired
            .with_label_values(&[cluster])
            .set(i64::from(lease.expired));
    }
    g.cluster_endpoints.reset();
    for cluster in snap.clusters.keys() {
        let healthy: usize = snap
            .services
            .get(cluster)
            .map(|svcs| {
                svcs.values()
                    .flat_map(|s| &s.endpoints)
                    .filter(|e| e.health == isthmus_federation::model::Health::Healthy)
                    .count()
            })
            .unwrap_or(0);
        g.cluster_endpoints
            .with_label_values(&[cluster])
            .set(i64::try_from(healthy).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn citadel_names_follow_the_ca_counters() {
        let r = Registry::new();
        let ca = ca_metrics(&r).expect("register");
        ca.count("issued");
        ca.count("issued");
        ca.count("unauthenticated");
        ca.count("invalid");
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&r.gather(), &mut buf)
            .expect("encode");
        let text = String::from_utf8(buf).expect("utf8");
        for line in [
            "citadel_server_csr_count 4",
            "citadel_server_success_cert_issuance_count 2",
            "citadel_server_authentication_failure_count 1",
            "citadel_server_csr_parsing_err_count 1",
            "citadel_server_csr_sign_err_count 0",
            "isthmus_ca_csr_requests_total{outcome=\"issued\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
