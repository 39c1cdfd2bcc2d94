//! The JSON documents behind `isthmus status` and `isthmus proxy-config`:
//! one status view of the whole control plane, and per-proxy config dumps.
//! Their shape is the contract with the CLI (`crate::cli::status` reads it
//! back), so it is typed on both sides.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use isthmus_federation::{NodeStatus, RegistrySnapshot};
use isthmus_xds::{ProxyStatus, SyncState, TypeUrl};
use serde::{Deserialize, Serialize};

use crate::store::ConfigSnapshot;
use crate::translate::render::render_any;

/// A response that has waited this long for its ACK counts as stale: the
/// proxy is slow, stuck, or its stream is wedged.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub cluster: String,
    pub config: ConfigView,
    pub registry: RegistryView,
    /// `None` with `federation_error` set when the node did not answer.
    pub federation: Option<FederationView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_error: Option<String>,
    pub proxies: Vec<ProxyView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    pub version: u64,
    pub resources: usize,
    /// Errors and warnings of the sources, as `istioctl analyze` prints them.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryView {
    pub revision: u64,
    pub applied_index: u64,
    pub clusters: Vec<ClusterView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub id: String,
    pub network: String,
    pub services: usize,
    pub endpoints: usize,
    /// `active`, `expired`, or `none` (never registered a lease).
    pub lease: String,
    /// Log index of the last renewal.
    pub lease_renewed_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FederationView {
    pub node: u64,
    pub role: String,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// How far each peer's log is behind (known on the leader only).
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub id: u64,
    pub lag: u64,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    pub node_id: String,
    pub stream: u64,
    /// `state-of-the-world` or `delta`.
    pub kind: String,
    pub cluster_id: Option<String>,
    pub role: String,
    pub connected_secs: u64,
    /// Per type (`cds`, `eds`, `lds`, `rds`, `sds`).
    pub types: BTreeMap<String, TypeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeView {
    /// `synced`, `sent`, `not-sent`, `nacked` or `stale`.
    pub state: String,
    pub resources: usize,
    pub sent_version: Option<String>,
    pub acked_version: Option<String>,
    /// The control-plane input version the last response was computed for.
    pub input_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_error: Option<String>,
}

fn age(at: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(at).unwrap_or_default()
}

pub fn proxy_view(p: &ProxyStatus, now: SystemTime) -> ProxyView {
    let types = p
        .types
        .iter()
        .map(|(t, s)| {
            let state = match s.state {
                SyncState::Synced => "synced",
                SyncState::Nacked => "nacked",
                SyncState::NotSent => "not-sent",
                SyncState::Sent if s.sent_at.is_some_and(|at| age(at, now) > STALE_AFTER) => "stale",
                SyncState::Sent => "sent",
            };
            let view = TypeView {
                state: state.to_string(),
                resources: s.resources().len(),
                sent_version: s.sent_version.clone(),
                acked_version: s.acked_version.clone(),
                input_version: s.input_version,
                nack: s.last_nack.as_ref().map(|n| {
                    format!("version {} rejected: {}", n.rejected_version, n.message)
                }),
                generate_error: s.generate_error.clone(),
            };
            (t.short().to_string(), view)
        })
        .collect();
    ProxyView {
        node_id: p.proxy.node_id.clone(),
        stream: p.stream_id,
        kind: match p.kind {
            isthmus_xds::StreamKind::StateOfTheWorld => "state-of-the-world",
            isthmus_xds::StreamKind::Delta => "delta",
        }
        .to_string(),
        cluster_id: p.proxy.cluster_id.clone(),
        role: p.proxy.role.to_string(),
        connected_secs: age(p.connected_at, now).as_secs(),
        types,
    }
}

pub fn registry_view(snap: &RegistrySnapshot) -> RegistryView {
    let clusters = snap
        .clusters
        .values()
        .map(|c| {
            let services = snap.services.get(&c.id);
            let lease = snap.leases.get(&c.id);
            ClusterView {
                id: c.id.clone(),
                network: c.network.clone(),
                services: services.map_or(0, |s| s.len()),
                endpoints: services.map_or(0, |s| s.values().map(|cs| cs.endpoints.len()).sum()),
                lease: match lease {
                    None => "none",
                    Some(l) if l.expired => "expired",
                    Some(_) => "active",
                }
                .to_string(),
                lease_renewed_at: lease.map(|l| l.renewed_at),
            }
        })
        .collect();
    RegistryView {
        revision: snap.revision,
        applied_index: snap.applied_index,
        clusters,
    }
}

pub fn federation_view(s: &NodeStatus) -> FederationView {
    FederationView {
        node: s.id,
        role: format!("{:?}", s.role).to_lowercase(),
        leader: s.leader,
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        peers: s
            .peers
            .iter()
            .map(|p| PeerView {
                id: p.id,
                lag: p.lag,
                state: p.state.clone(),
            })
            .collect(),
    }
}

pub fn config_view(snap: &ConfigSnapshot) -> ConfigView {
    use crate::analyze::Severity;
    let of = |sev: Severity| {
        snap.diagnostics()
            .iter()
            .filter(|d| d.severity == sev)
            .map(|d| d.to_string())
            .collect()
    };
    ConfigView {
        version: snap.version(),
        resources: snap.len(),
        errors: of(Severity::Error),
        warnings: of(Severity::Warning),
    }
}

/// The resource types as `proxy-config` names them.
pub fn parse_type(word: &str) -> Option<TypeUrl> {
    Some(match word {
        "clusters" | "cluster" | "cds" => TypeUrl::Cluster,
        "endpoints" | "endpoint" | "eds" => TypeUrl::ClusterLoadAssignment,
        "listeners" | "listener" | "lds" => TypeUrl::Listener,
        "routes" | "route" | "rds" => TypeUrl::RouteConfiguration,
        "secrets" | "secret" | "sds" => TypeUrl::Secret,
        _ => return None,
    })
}

/// One resource a proxy was last sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpedResource {
    pub name: String,
    pub version: String,
    pub type_url: String,
    /// Whether the proxy ACKed the response that carried it.
    pub acked: bool,
    /// The decoded message, in the readable form of `translate::render`.
    pub config: String,
}

/// What the streams of `node_id` were last sent of `t`, by name. `None`
/// when no stream of that node is connected.
pub fn config_dump(statuses: &[ProxyStatus], node_id: &str, t: TypeUrl) -> Option<Vec<DumpedResource>> {
    let mine: Vec<&ProxyStatus> = statuses.iter().filter(|s| s.proxy.node_id == node_id).collect();
    if mine.is_empty() {
        return None;
    }
    let mut out: BTreeMap<String, DumpedResource> = BTreeMap::new();
    for s in mine {
        let Some(ts) = s.types.get(&t) else { continue };
        let acked = ts.state == SyncState::Synced;
        for (name, r) in ts.resources().iter() {
            out.insert(
                name.clone(),
                DumpedResource {
                    name: name.clone(),
                    version: r.version.clone(),
                    type_url: r.body.type_url.clone(),
                    acked,
                    config: render_any(&r.body),
                },
            );
        }
    }
    Some(out.into_values().collect())
}
