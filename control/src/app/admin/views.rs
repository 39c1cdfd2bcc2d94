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
                SyncState::Sent if s.sent_at.is_some_and(|at| age(at, now) > STALE_AFTER) => {
                    "stale"
                }
                SyncState::Sent => "sent",
            };
            let view = TypeView {
                state: state.to_string(),
                resources: s.resources().len(),
                sent_version: s.sent_version.clone(),
                acked_version: s.acked_version.clone(),
                input_version: s.input_version,
                nack: s
                    .last_nack
                    .as_ref()
                    .map(|n| format!("version {} rejected: {}", n.rejected_version, n.message)),
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
        "names" | "nametable" | "nds" => TypeUrl::NameTable,
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
    /// One line per interesting part (endpoint addresses and health, the
    /// cluster's discovery type, the listener's address): the table view.
    pub summary: Vec<String>,
    /// The decoded message: structured (see [`super::debug_json`]), or the
    /// readable text of `translate::render` if that does not convert.
    pub config: serde_json::Value,
}

/// The table columns of `proxy-config` for one resource.
fn summarize(t: TypeUrl, body: &envoy_types::pb::google::protobuf::Any) -> Vec<String> {
    use envoy_types::pb::envoy::config::cluster::v3::{
        cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster,
    };
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address::PortSpecifier, Address, HealthStatus,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint::HostIdentifier, ClusterLoadAssignment,
    };
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Message;

    fn addr(a: Option<&Address>) -> String {
        match a.and_then(|a| a.address.as_ref()) {
            Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => format!("{}:{p}", sa.address),
                _ => sa.address.clone(),
            },
            Some(other) => format!("{other:?}"),
            None => "-".into(),
        }
    }
    let bytes = body.value.as_slice();
    match t {
        TypeUrl::ClusterLoadAssignment => ClusterLoadAssignment::decode(bytes)
            .map(|cla| {
                cla.endpoints
                    .iter()
                    .flat_map(|group| {
                        let locality = group
                            .locality
                            .as_ref()
                            .map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone))
                            .unwrap_or_default();
                        group.lb_endpoints.iter().map(move |e| {
                            let address = match &e.host_identifier {
                                Some(HostIdentifier::Endpoint(ep)) => addr(ep.address.as_ref()),
                                _ => "-".into(),
                            };
                            let health = HealthStatus::try_from(e.health_status)
                                .map(|h| h.as_str_name().to_string())
                                .unwrap_or_else(|_| e.health_status.to_string());
                            format!(
                                "{address} {health} priority={} locality={locality}",
                                group.priority
                            )
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        TypeUrl::Cluster => Cluster::decode(bytes)
            .map(|c| {
                let kind = match c.cluster_discovery_type {
                    Some(ClusterDiscoveryType::Type(k)) => DiscoveryType::try_from(k)
                        .map(|d| d.as_str_name().to_string())
                        .unwrap_or_else(|_| k.to_string()),
                    Some(ClusterDiscoveryType::ClusterType(ct)) => ct.name,
                    None => "EDS?".into(),
                };
                let tls = if c.transport_socket.is_some() {
                    "tls"
                } else {
                    "plaintext"
                };
                vec![format!("{kind} {tls}")]
            })
            .unwrap_or_default(),
        TypeUrl::Listener => Listener::decode(bytes)
            .map(|l| {
                if l.api_listener.is_some() {
                    vec!["api_listener".to_string()]
                } else {
                    vec![format!(
                        "{} chains={}",
                        addr(l.address.as_ref()),
                        l.filter_chains.len()
                    )]
                }
            })
            .unwrap_or_default(),
        TypeUrl::RouteConfiguration => RouteConfiguration::decode(bytes)
            .map(|r| {
                r.virtual_hosts
                    .iter()
                    .map(|vh| {
                        format!(
                            "{} domains={} routes={}",
                            vh.name,
                            vh.domains.len(),
                            vh.routes.len()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        TypeUrl::Secret | TypeUrl::NameTable => Vec::new(),
    }
}

/// What the streams of `node_id` were last sent of `t`, by name. `None`
/// when no stream of that node is connected.
pub fn config_dump(
    statuses: &[ProxyStatus],
    node_id: &str,
    t: TypeUrl,
) -> Option<Vec<DumpedResource>> {
    let mine: Vec<&ProxyStatus> = statuses
        .iter()
        .filter(|s| s.proxy.node_id == node_id)
        .collect();
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
                    summary: summarize(t, &r.body),
                    config: {
                        let text = render_any(&r.body);
                        let mut v = super::debug_json::to_json(&text)
                            .unwrap_or(serde_json::Value::String(text));
                        // Gateway credentials carry private keys: never on the admin port.
                        if t == TypeUrl::Secret {
                            redact_private_keys(&mut v);
                        }
                        v
                    },
                },
            );
        }
    }
    Some(out.into_values().collect())
}

/// Replaces every `private_key` in a dumped resource; a dump that is not
/// structured JSON is withheld whole rather than risk printing a key.
fn redact_private_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if k == "private_key" || k == "privateKey" {
                    *val = serde_json::Value::String("[redacted]".into());
                } else {
                    redact_private_keys(val);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_private_keys),
        serde_json::Value::String(s) if s.contains("PRIVATE KEY") => {
            *s = "[withheld: contains a private key]".into();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::core::v3::Node;
    use isthmus_xds::{Nack, Proxy, StreamKind, TypeStatus};

    use super::*;

    fn status(types: Vec<(TypeUrl, TypeStatus)>, now: SystemTime) -> ProxyStatus {
        let proxy = Proxy::from_node(Some(&Node {
            id: "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local".into(),
            ..Default::default()
        }))
        .expect("valid node");
        ProxyStatus {
            stream_id: 3,
            kind: StreamKind::StateOfTheWorld,
            proxy: Arc::new(proxy),
            connected_at: now - Duration::from_secs(90),
            types: types.into_iter().collect(),
        }
    }

    #[test]
    fn states_stale_and_nacks() {
        let now = SystemTime::now();
        // Built field by field: the sent resources are the xDS crate's own.
        let with = |state: SyncState, ago: Option<u64>| {
            let mut t = TypeStatus::default();
            t.state = state;
            t.sent_at = ago.map(|a| now - Duration::from_secs(a));
            t
        };
        let sent = |ago: u64| with(SyncState::Sent, Some(ago));
        let mut nacked = with(SyncState::Nacked, Some(1));
        nacked.last_nack = Some(Nack {
            rejected_version: "v2".into(),
            nonce: "3-4".into(),
            message: "bad cluster".into(),
            at: now,
        });
        let view = proxy_view(
            &status(
                vec![
                    (TypeUrl::Cluster, nacked),
                    (TypeUrl::Listener, sent(1)),
                    (TypeUrl::RouteConfiguration, sent(STALE_AFTER.as_secs() + 5)),
                    (
                        TypeUrl::ClusterLoadAssignment,
                        with(SyncState::Synced, Some(600)),
                    ),
                ],
                now,
            ),
            now,
        );
        assert_eq!(view.types["cds"].state, "nacked");
        assert_eq!(
            view.types["cds"].nack.as_deref(),
            Some("version v2 rejected: bad cluster")
        );
        assert_eq!(view.types["lds"].state, "sent");
        assert_eq!(view.types["rds"].state, "stale");
        assert_eq!(view.types["eds"].state, "synced");
        assert_eq!(view.connected_secs, 90);
        assert_eq!(view.kind, "state-of-the-world");
    }

    #[test]
    fn dump_of_unknown_proxy_is_none_and_types_parse() {
        assert!(config_dump(&[], "nobody", TypeUrl::Cluster).is_none());
        let now = SystemTime::now();
        let one = status(vec![], now);
        let dump = config_dump(
            &[one],
            "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local",
            TypeUrl::Cluster,
        );
        assert_eq!(dump.map(|d| d.len()), Some(0));
        assert_eq!(parse_type("routes"), Some(TypeUrl::RouteConfiguration));
        assert_eq!(parse_type("eds"), Some(TypeUrl::ClusterLoadAssignment));
        assert_eq!(parse_type("pods"), None);
    }
}
