//! The QUIC tunnel between east-west gateways, per peer cluster
//! (`MeshConfig.federation.peers[].transport: quic`).
//!
//! For a peer reached over the tunnel, this cluster's proxies do not dial
//! the peer's gateway themselves: their endpoint for that cluster is this
//! cluster's own east-west gateway on [`TUNNEL_OUTBOUND_PORT`] (host of
//! `gateways.eastWest`). The mTLS between the two workloads is unchanged
//! (same SNI, same identities); the local gateway reads the SNI without
//! terminating TLS, exactly like 15443, and sends the bytes to cluster
//! `tunnel|SNI`, whose endpoints are the peers' published QUIC addresses
//! and which carries `metadata.filter_metadata.isthmus.tunnel = "quic"`.
//! The gateway's tunnel client falls back to TCP to the same `host:port`
//! when the QUIC handshake fails, so a peer's QUIC address must be its
//! passthrough address on UDP (`15443/udp` beside `15443/tcp`).
//!
//! The sidecar chooses "a tunnelled cluster" with its usual locality and
//! priority rules; the local gateway then chooses among the tunnelled peer
//! clusters with the same rules computed for itself.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use isthmus_federation::model::Health;
use isthmus_xds::Names;

use crate::config::{labels_match, PeerTransport};

use super::cluster::{targets_for, Target};
use super::endpoint::{build, Candidate};
use super::listener::{tcp_proxy_filter, tls_inspector};
use super::naming::outbound_sni;
use super::proto::{ads, duration, socket_address, split_host_port};
use super::services::RemoteInstances;
use super::Context;

/// Where an east-west gateway accepts its own cluster's connections for
/// the tunnel (15443 is taken by inbound passthrough for the same SNIs).
pub const TUNNEL_OUTBOUND_PORT: u16 = 15444;
pub const TUNNEL_OUTBOUND_LISTENER: &str = "0.0.0.0_15444";

/// Cluster metadata key the gateway reads (`gateway/src/config/cluster.rs`).
const METADATA_NAMESPACE: &str = "isthmus";

/// The transport this cluster's MeshConfig names for peer `cluster`.
pub fn peer_transport(ctx: &Context<'_>, cluster: &str) -> PeerTransport {
    ctx.inputs
        .config
        .mesh_config()
        .and_then(|m| m.spec.federation.as_ref())
        .and_then(|f| f.peers.iter().find(|p| p.id == cluster))
        .and_then(|p| p.transport)
        .unwrap_or_default()
}

/// This cluster's east-west gateway host (from `gateways.eastWest`).
fn local_gateway_host(ctx: &Context<'_>) -> Option<String> {
    let addr = ctx
        .inputs
        .config
        .mesh_config()?
        .spec
        .gateways
        .as_ref()?
        .east_west
        .clone()?;
    split_host_port(&addr).map(|(h, _)| h)
}

/// Whether `remote` is reached through the tunnel.
fn tunnelled(ctx: &Context<'_>, remote: &RemoteInstances) -> bool {
    remote.network != ctx.network()
        && !remote.eastwest_quic.is_empty()
        && peer_transport(ctx, &remote.cluster) == PeerTransport::Quic
}

/// For a proxy other than an east-west gateway: the endpoint standing for
/// `remote` when it is reached through the tunnel (this cluster's gateway
/// on [`TUNNEL_OUTBOUND_PORT`]); `None` to dial the peer directly.
pub fn entry_for(ctx: &Context<'_>, remote: &RemoteInstances) -> Option<(String, u16)> {
    if !tunnelled(ctx, remote) {
        return None;
    }
    match local_gateway_host(ctx) {
        Some(host) => Some((host, TUNNEL_OUTBOUND_PORT)),
        None => {
            tracing::warn!(
                cluster = %remote.cluster,
                "peer transport is quic but this cluster's MeshConfig has no gateways.eastWest; dialing the peer over TCP"
            );
            None
        }
    }
}

fn cluster_name(sni: &str) -> String {
    format!("tunnel|{sni}")
}

/// One target per service port and subset with at least one tunnelled peer.
fn targets<'a>(ctx: &Context<'a>) -> Vec<(String, Target<'a>)> {
    ctx.inputs
        .services
        .iter()
        .filter(|svc| svc.remote.iter().any(|r| tunnelled(ctx, r)))
        .flat_map(|svc| {
            let rule = ctx
                .scope
                .destination_rule(&svc.hostname, &svc.namespace)
                .map(|r| &r.spec);
            targets_for(svc, rule, |port, subset| {
                outbound_sni(port, subset, &svc.hostname)
            })
        })
        .map(|t| (cluster_name(&t.name), t))
        .collect()
}

/// East-west gateway: the listener local sidecars reach the tunnel through.
pub fn listener(ctx: &Context<'_>) -> Option<Listener> {
    let mut chains: Vec<FilterChain> = targets(ctx)
        .iter()
        .map(|(cluster, t)| FilterChain {
            name: cluster.clone(),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![t.name.clone()],
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(cluster, cluster)],
            ..Default::default()
        })
        .collect();
    chains.sort_by(|a, b| a.name.cmp(&b.name));
    chains.dedup_by(|a, b| a.name == b.name);
    if chains.is_empty() {
        return None;
    }
    Some(Listener {
        name: TUNNEL_OUTBOUND_LISTENER.to_string(),
        address: Some(socket_address(
            &ctx.proxy.ip.to_string(),
            TUNNEL_OUTBOUND_PORT,
        )),
        listener_filters: vec![tls_inspector()],
        filter_chains: chains,
        ..Default::default()
    })
}

fn tunnel_metadata() -> Metadata {
    let mut fields = BTreeMap::new();
    fields.insert(
        "tunnel".to_string(),
        Value {
            kind: Some(Kind::StringValue("quic".to_string())),
        },
    );
    let mut meta = Metadata::default();
    meta.filter_metadata.insert(
        METADATA_NAMESPACE.to_string(),
        Struct {
            fields: fields.into_iter().collect(),
        },
    );
    meta
}

/// East-west gateway: one EDS cluster per tunnel target, marked for QUIC.
pub fn clusters(ctx: &Context<'_>, connect_timeout: std::time::Duration) -> Vec<Cluster> {
    targets(ctx)
        .into_iter()
        .map(|(name, _)| Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name,
            }),
            connect_timeout: Some(duration(connect_timeout)),
            metadata: Some(tunnel_metadata()),
            ..Default::default()
        })
        .collect()
}

/// East-west gateway: the peers' QUIC addresses for each tunnel cluster,
/// weighted by their healthy endpoints of the target (and subset).
pub fn assignments(ctx: &Context<'_>, names: &Names) -> Vec<ClusterLoadAssignment> {
    targets(ctx)
        .into_iter()
        .filter(|(name, _)| names.contains(name))
        .map(|(name, t)| {
            let selected = |labels: &BTreeMap<String, String>| {
                t.subset_labels
                    .as_ref()
                    .is_none_or(|sel| labels_match(sel, labels))
            };
            let mut candidates = Vec::new();
            for remote in t.service.remote.iter().filter(|r| tunnelled(ctx, r)) {
                if remote.port(t.port.port).is_none() {
                    continue;
                }
                let healthy = remote
                    .endpoints
                    .iter()
                    .filter(|e| e.health == Health::Healthy && selected(&e.labels))
                    .count();
                let Ok(healthy) = u32::try_from(healthy) else {
                    continue;
                };
                if healthy == 0 {
                    continue;
                }
                for addr in &remote.eastwest_quic {
                    let Some((host, port)) = split_host_port(addr) else {
                        tracing::warn!(cluster = %remote.cluster, address = %addr, "QUIC tunnel address is not host:port; skipping it");
                        continue;
                    };
                    candidates.push(Candidate {
                        address: host,
                        port,
                        locality: remote.locality.clone(),
                        network: remote.network.clone(),
                        labels: None,
                        weight: healthy,
                        healthy: true,
                        workload: None,
                    });
                }
            }
            let setting = t
                .policy
                .load_balancer
                .as_ref()
                .and_then(|lb| lb.locality_lb_setting.as_ref());
            build(ctx, &name, candidates, setting)
        })
        .collect()
}
