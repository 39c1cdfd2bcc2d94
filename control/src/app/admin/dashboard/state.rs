//! The document behind the dashboard page (`/dashboard/state.json`): one
//! control plane's view of the federation, built from the same data as
//! `isthmus status` ([`StatusView`]) plus the registry's cluster and service
//! details and the traffic the collector measured. `isthmus dashboard`
//! merges several of these (see [`super::merge`]); the page renders either.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use isthmus_federation::model::Health as EndpointHealth;
use isthmus_federation::RegistrySnapshot;
use serde::{Deserialize, Serialize};

use super::rates::{EdgeKey, Protocol, Reporter};
use crate::app::admin::views::{ClusterView, FederationView, ProxyView, StatusView};

// No PartialEq: the views it reuses have none; compare the JSON instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardState {
    /// Milliseconds since the Unix epoch.
    pub generated_at_ms: u64,
    /// The control planes this view was made from, with what each said of
    /// itself (merging reads these).
    pub sources: Vec<SourceState>,
    pub raft: RaftState,
    pub clusters: Vec<ClusterState>,
    pub gateways: Vec<GatewayState>,
    pub services: Vec<ServiceState>,
    pub traffic: TrafficState,
    /// Things an operator should look at, one sentence each.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceState {
    /// The cluster of this control plane (empty if it never answered).
    pub cluster: String,
    /// Where it was polled (empty: this process is that control plane).
    pub address: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub registry_revision: u64,
    pub applied_index: u64,
    /// Its federation node's Raft status; `None` when it did not answer.
    pub federation: Option<FederationView>,
    /// Raft node id to member name (cluster id, or a witness's name).
    pub node_names: BTreeMap<u64, String>,
    pub proxies: usize,
    pub proxies_synced: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaftState {
    /// The leader's name; `None` while no leader is known.
    pub leader: Option<String>,
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub members: Vec<RaftMember>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaftMember {
    pub id: u64,
    pub name: String,
    /// `leader`, `follower`, ... as the member itself says (polled members only).
    pub role: Option<String>,
    pub applied: Option<u64>,
    /// Entries behind the leader: from the leader's replication progress
    /// when the leader was polled, else the highest known commit minus the
    /// member's applied index.
    pub lag: Option<u64>,
    /// Replication state on the leader (`Probe`, `Replicate`, `Snapshot`).
    pub state: Option<String>,
}

/// Whether the dashboard could ask a cluster's control plane itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    Reachable,
    Unreachable,
    /// Not polled by this view.
    #[default]
    Unknown,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Lease active, control plane not known to be down.
    Up,
    /// Lease expired and the control plane does not answer (or was not asked).
    Down,
    /// Lease expired although its control plane answers: it is cut off
    /// from the federation's quorum.
    Partitioned,
    /// Lease active but the dashboard cannot reach the control plane
    /// (check the tunnel or address given to `isthmus dashboard`).
    Unreachable,
    /// No lease was ever registered.
    #[default]
    Unknown,
}

/// A cluster's health from its lease (`active`, `expired`, `none`, as in
/// [`ClusterView::lease`]) and whether its control plane answered.
pub fn health(lease: &str, control: Reach) -> Health {
    match (lease, control) {
        ("active", Reach::Unreachable) => Health::Unreachable,
        ("active", _) => Health::Up,
        ("expired", Reach::Reachable) => Health::Partitioned,
        ("expired", _) => Health::Down,
        (_, Reach::Unreachable) => Health::Unreachable,
        _ => Health::Unknown,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    #[serde(flatten)]
    pub view: ClusterView,
    /// `region/zone`.
    pub locality: String,
    pub health: Health,
    pub control: Reach,
    /// Its federation node's role, when its control plane answered.
    pub raft_role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayState {
    pub cluster: String,
    /// `east-west`, `ingress` or `egress`.
    pub role: String,
    /// Advertised in the registry (`host:port`; QUIC ones end in `/udp`).
    pub addresses: Vec<String>,
    /// The gateway proxies connected to the cluster's control plane; `None`
    /// when that control plane was not asked.
    pub proxies: Option<Vec<GatewayProxy>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayProxy {
    pub node_id: String,
    /// `synced`, or the worst state of its xDS types (`nacked`, `stale`, ...).
    pub xds: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceState {
    pub name: String,
    pub namespace: String,
    /// `PROTOCOL PORT` per port.
    pub ports: Vec<String>,
    pub instances: Vec<ServiceInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInstance {
    pub cluster: String,
    pub endpoints: usize,
    pub healthy: usize,
    /// Healthy endpoints in a cluster whose lease is active: what callers
    /// in other clusters are sent to.
    pub available: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficState {
    /// Milliseconds since the Unix epoch of the last collection round.
    pub collected_at_ms: u64,
    /// The interval the rates are measured over (`None` before the second
    /// round: a rate needs two scrapes).
    pub window_secs: Option<f64>,
    /// Proxies asked / answered in the last round.
    pub targets: usize,
    pub scraped: usize,
    pub edges: Vec<EdgeState>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeState {
    #[serde(flatten)]
    pub key: EdgeKey,
    /// Requests (HTTP) or connections (TCP) per second.
    pub rps: f64,
    /// Share of non-5xx answers; `None` for TCP or without requests.
    pub success_rate: Option<f64>,
}

impl EdgeState {
    pub fn new(key: EdgeKey, per_sec: f64, errors_per_sec: f64) -> Self {
        let success_rate = (key.protocol == Protocol::Http && per_sec > 0.0)
            .then(|| (1.0 - errors_per_sec / per_sec).clamp(0.0, 1.0));
        EdgeState {
            key,
            rps: per_sec,
            success_rate,
        }
    }
}

/// Both sides of a call report it; keep the caller's count (as Istio's
/// dashboards do) and the callee's only where the caller reported nothing,
/// e.g. calls from outside the mesh. Equal keys (the same edge from two
/// views) add up.
pub fn combine_edges(edges: impl IntoIterator<Item = EdgeState>) -> Vec<EdgeState> {
    let mut summed: BTreeMap<EdgeKey, (f64, f64)> = BTreeMap::new();
    for e in edges {
        let errors = e.success_rate.map_or(0.0, |s| (1.0 - s) * e.rps);
        let slot = summed.entry(e.key).or_default();
        slot.0 += e.rps;
        slot.1 += errors;
    }
    let by_caller: BTreeSet<(String, Option<String>, String, Protocol)> = summed
        .keys()
        .filter(|k| k.reporter == Reporter::Source)
        .map(|k| {
            (
                k.source.clone(),
                k.source_cluster.clone(),
                k.destination.clone(),
                k.protocol,
            )
        })
        .collect();
    let caller_reported = |k: &EdgeKey| {
        by_caller.iter().any(|(s, sc, d, p)| {
            *s == k.source
                && *d == k.destination
                && *p == k.protocol
                && (k.source_cluster.is_none() || *sc == k.source_cluster)
        })
    };
    summed
        .into_iter()
        .filter(|(k, _)| k.reporter == Reporter::Source || !caller_reported(k))
        .map(|(k, (rps, errors))| EdgeState::new(k, rps, errors))
        .collect()
}

pub fn now_ms(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Everything one control plane knows, at one moment.
pub struct Inputs<'a> {
    pub status: &'a StatusView,
    pub snapshot: &'a RegistrySnapshot,
    /// Federation members named in this cluster's MeshConfig (witnesses
    /// included), so Raft ids of members not in the registry get names.
    pub peers: &'a [String],
    pub traffic: &'a TrafficState,
    pub now: SystemTime,
}

/// The worst xDS state of a proxy: what needs attention first.
fn xds_summary(p: &ProxyView) -> String {
    const ORDER: [&str; 5] = ["nacked", "stale", "sent", "not-sent", "synced"];
    p.types
        .values()
        .map(|t| t.state.as_str())
        .min_by_key(|s| ORDER.iter().position(|o| o == s).unwrap_or(0))
        .unwrap_or("not-sent")
        .to_string()
}

fn gateways(snap: &RegistrySnapshot, local: &str, proxies: &[ProxyView]) -> Vec<GatewayState> {
    let mut out = Vec::new();
    for c in snap.clusters.values() {
        let eastwest: Vec<String> = c
            .eastwest_tcp
            .iter()
            .cloned()
            .chain(c.eastwest_quic.iter().map(|q| format!("{q}/udp")))
            .collect();
        for (role, addresses) in [("east-west", eastwest), ("ingress", c.ingress.clone())] {
            if !addresses.is_empty() {
                out.push(GatewayState {
                    cluster: c.id.clone(),
                    role: role.to_string(),
                    addresses,
                    proxies: None,
                });
            }
        }
    }
    // The local cluster's gateways: what is connected, also when not advertised.
    let mut by_role: BTreeMap<&str, Vec<GatewayProxy>> = BTreeMap::new();
    for p in proxies.iter().filter(|p| p.role != "sidecar") {
        let list = by_role.entry(p.role.as_str()).or_default();
        if !list.iter().any(|g| g.node_id == p.node_id) {
            list.push(GatewayProxy {
                node_id: p.node_id.clone(),
                xds: xds_summary(p),
            });
        }
    }
    for g in out.iter_mut().filter(|g| g.cluster == local) {
        g.proxies = Some(by_role.remove(g.role.as_str()).unwrap_or_default());
    }
    for (role, list) in by_role {
        out.push(GatewayState {
            cluster: local.to_string(),
            role: role.to_string(),
            addresses: Vec::new(),
            proxies: Some(list),
        });
    }
    out
}

fn services(snap: &RegistrySnapshot) -> Vec<ServiceState> {
    snap.service_keys()
        .iter()
        .map(|key| {
            let mut ports: Vec<String> = Vec::new();
            let instances = snap
                .instances(key)
                .map(|cs| {
                    for p in &cs.service.ports {
                        let port = format!("{} {}", p.protocol, p.port);
                        if !ports.contains(&port) {
                            ports.push(port);
                        }
                    }
                    let healthy = cs
                        .endpoints
                        .iter()
                        .filter(|e| e.health == EndpointHealth::Healthy)
                        .count();
                    let lease_ok = snap.leases.get(&cs.cluster).is_none_or(|l| !l.expired);
                    ServiceInstance {
                        cluster: cs.cluster.clone(),
                        endpoints: cs.endpoints.len(),
                        healthy,
                        available: healthy > 0 && lease_ok,
                    }
                })
                .collect();
            ServiceState {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                ports,
                instances,
            }
        })
        .collect()
}

/// Names of Raft ids, derived the way the control plane derives them.
pub fn node_names<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<u64, String> {
    names
        .into_iter()
        .filter(|n| !n.is_empty())
        .map(|n| (crate::app::federation::node_id(n), n.to_string()))
        .collect()
}

/// One control plane's dashboard document.
pub fn build(i: Inputs<'_>) -> DashboardState {
    let status = i.status;
    let local = status.cluster.as_str();
    let names = node_names(
        i.snapshot
            .clusters
            .keys()
            .map(String::as_str)
            .chain(i.peers.iter().map(String::as_str))
            .chain([local]),
    );
    let source = SourceState {
        cluster: local.to_string(),
        address: String::new(),
        ok: true,
        error: None,
        registry_revision: status.registry.revision,
        applied_index: status.registry.applied_index,
        federation: status.federation.clone(),
        node_names: names,
        proxies: status
            .proxies
            .iter()
            .map(|p| &p.node_id)
            .collect::<BTreeSet<_>>()
            .len(),
        proxies_synced: status
            .proxies
            .iter()
            .filter(|p| xds_summary(p) == "synced")
            .map(|p| &p.node_id)
            .collect::<BTreeSet<_>>()
            .len(),
    };
    let clusters = status
        .registry
        .clusters
        .iter()
        .map(|view| {
            let control = if view.id == local {
                Reach::Reachable
            } else {
                Reach::Unknown
            };
            let locality = i
                .snapshot
                .clusters
                .get(&view.id)
                .map(|c| format!("{}/{}", c.locality.region, c.locality.zone))
                .unwrap_or_default();
            ClusterState {
                view: view.clone(),
                locality,
                health: health(&view.lease, control),
                control,
                raft_role: (view.id == local)
                    .then(|| status.federation.as_ref().map(|f| f.role.clone()))
                    .flatten(),
            }
        })
        .collect();
    let mut problems = Vec::new();
    if let Some(e) = &status.federation_error {
        problems.push(format!("{local}: federation node: {e}"));
    }
    for e in &status.config.errors {
        problems.push(format!("{local}: config: {e}"));
    }
    for p in &status.proxies {
        for (t, s) in &p.types {
            if let Some(n) = &s.nack {
                problems.push(format!("{local}: {} rejected {t}: {n}", p.node_id));
            }
        }
    }
    let mut traffic = i.traffic.clone();
    traffic.edges = combine_edges(traffic.edges);
    let sources = vec![source];
    DashboardState {
        generated_at_ms: now_ms(i.now),
        raft: raft_state(&sources),
        sources,
        clusters,
        gateways: gateways(i.snapshot, local, &status.proxies),
        services: services(i.snapshot),
        traffic,
        problems,
    }
}

/// The Raft picture from every source that answered: the leader as the
/// member with the newest term says, lag from the leader's own progress
/// when the leader is among them.
pub fn raft_state(sources: &[SourceState]) -> RaftState {
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    for s in sources {
        names.extend(s.node_names.iter().map(|(k, v)| (*k, v.clone())));
    }
    let views: Vec<&FederationView> = sources
        .iter()
        .filter(|s| s.ok)
        .filter_map(|s| s.federation.as_ref())
        .collect();
    let best = views
        .iter()
        .max_by_key(|v| (v.term, v.leader != 0, v.role == "leader"))
        .copied();
    let leader_id = best.map_or(0, |v| v.leader);
    let leader_view = views
        .iter()
        .filter(|v| v.node == leader_id && v.role == "leader")
        .max_by_key(|v| v.term)
        .copied();
    let commit = views.iter().map(|v| v.commit).max().unwrap_or(0);
    let name = |id: u64| {
        names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("node {id}"))
    };
    let mut ids: BTreeSet<u64> = names.keys().copied().collect();
    ids.extend(views.iter().map(|v| v.node));
    if let Some(l) = leader_view {
        ids.extend(l.peers.iter().map(|p| p.id));
    }
    let members = ids
        .into_iter()
        .map(|id| {
            let own = views.iter().filter(|v| v.node == id).max_by_key(|v| v.term);
            let progress = leader_view.and_then(|l| l.peers.iter().find(|p| p.id == id));
            let lag = if leader_view.is_some_and(|l| l.node == id) {
                Some(0)
            } else if let Some(p) = progress {
                Some(p.lag)
            } else {
                own.map(|v| commit.saturating_sub(v.applied))
            };
            RaftMember {
                id,
                name: name(id),
                role: own.map(|v| v.role.clone()),
                applied: own.map(|v| v.applied),
                lag,
                state: progress.map(|p| p.state.clone()),
            }
        })
        .collect();
    RaftState {
        leader: (leader_id != 0).then(|| name(leader_id)),
        leader_id,
        term: best.map_or(0, |v| v.term),
        commit,
        members,
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
