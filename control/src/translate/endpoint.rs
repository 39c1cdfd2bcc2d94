//! EDS: the endpoints of every EDS cluster the proxy sees. Local endpoints
//! and endpoints of clusters on the proxy's network are sent directly;
//! a cluster on another network is represented by its east-west gateway,
//! weighted by that cluster's healthy endpoint count. Every locality carries
//! its locality, a priority relative to the proxy, and a
//! `load_balancing_weight` (gRPC drops localities without one).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};

use isthmus_federation::model::{Health, Locality};
use isthmus_xds::{Names, ProxyRole};

use crate::config::{labels_match, LocalityLbSetting, Location, Resolution};

use super::cluster::{eastwest_targets, outbound_targets, Target};
use super::locality::{compact, distribute_rule, distribute_weights, level, Point};
use super::proto::{socket_address, split_host_port, u32v};
use super::Context;

/// One endpoint before grouping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub address: String,
    pub port: u16,
    pub locality: Locality,
    pub network: String,
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub weight: u32,
    pub healthy: bool,
}

/// Cluster load assignments for the EDS clusters named in `names`.
pub fn load_assignments(ctx: &Context<'_>, names: &Names) -> Vec<ClusterLoadAssignment> {
    let eastwest = ctx.role() == ProxyRole::EastWest;
    let targets = if eastwest {
        eastwest_targets(ctx)
    } else {
        outbound_targets(ctx)
    };
    let mut out: Vec<ClusterLoadAssignment> = targets
        .iter()
        .filter(|t| names.contains(&t.name) && is_eds(t))
        .map(|t| assignment(ctx, t, eastwest))
        .collect();
    out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out.dedup_by(|a, b| a.cluster_name == b.cluster_name);
    out
}

fn is_eds(t: &Target<'_>) -> bool {
    t.service.location == Location::MeshInternal || t.service.resolution == Resolution::Static
}

/// The endpoints of one target as `ctx`'s proxy should use them; with
/// `local_only` (east-west gateways) only this cluster's own workloads.
pub fn candidates<'a>(
    ctx: &Context<'_>,
    target: &Target<'a>,
    local_only: bool,
) -> Vec<Candidate<'a>> {
    let svc = target.service;
    let selected = |labels: &BTreeMap<String, String>| {
        target
            .subset_labels
            .as_ref()
            .is_none_or(|sel| labels_match(sel, labels))
    };
    let mut out = Vec::new();
    for i in svc.local.iter().filter(|i| selected(&i.labels)) {
        out.push(Candidate {
            address: i.address.clone(),
            port: i.port_for(target.port),
            locality: i.locality.clone(),
            network: i.network.clone(),
            labels: Some(&i.labels),
            weight: i.weight,
            healthy: i.health == Health::Healthy,
        });
    }
    if local_only {
        return out;
    }
    for remote in &svc.remote {
        let Some(rport) = remote.port(target.port.port) else {
            continue;
        };
        let usable: Vec<_> = remote
            .endpoints
            .iter()
            // A cluster whose lease expired is kept in the registry but
            // must not receive traffic.
            .filter(|e| e.health != Health::Unavailable && selected(&e.labels))
            .collect();
        if remote.network == ctx.network() {
            for e in usable {
                out.push(Candidate {
                    address: e.address.clone(),
                    port: e.port_for(rport),
                    locality: e.locality.clone(),
                    network: remote.network.clone(),
                    labels: Some(&e.labels),
                    weight: e.weight,
                    healthy: e.health == Health::Healthy,
                });
            }
            continue;
        }
        let healthy = u32::try_from(
            usable
                .iter()
                .filter(|e| e.health == Health::Healthy)
                .count(),
        )
        .unwrap_or(u32::MAX);
        if healthy == 0 {
            continue;
        }
        if remote.eastwest.is_empty() {
            tracing::warn!(
                cluster = %remote.cluster,
                service = %svc.hostname,
                "cluster is on another network but publishes no east-west gateway address; its endpoints are unreachable"
            );
        }
        for gw in &remote.eastwest {
            let Some((host, port)) = split_host_port(gw) else {
                tracing::warn!(cluster = %remote.cluster, address = %gw, "east-west gateway address is not host:port; skipping it");
                continue;
            };
            out.push(Candidate {
                address: host,
                port,
                locality: remote.locality.clone(),
                network: remote.network.clone(),
                labels: None,
                weight: healthy,
                healthy: true,
            });
        }
    }
    out
}

fn assignment(ctx: &Context<'_>, target: &Target<'_>, local_only: bool) -> ClusterLoadAssignment {
    let setting = target
        .policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref());
    build(
        ctx,
        &target.name,
        candidates(ctx, target, local_only),
        setting,
    )
}

/// Groups candidates by priority and locality.
pub fn build(
    ctx: &Context<'_>,
    cluster_name: &str,
    candidates: Vec<Candidate<'_>>,
    setting: Option<&LocalityLbSetting>,
) -> ClusterLoadAssignment {
    let caller = Point {
        locality: ctx.locality(),
        network: ctx.network(),
        labels: &ctx.proxy.labels,
    };
    let empty = BTreeMap::new();
    let levels: Vec<u32> = candidates
        .iter()
        .map(|c| {
            let target = Point {
                locality: &c.locality,
                network: &c.network,
                labels: c.labels.unwrap_or(&empty),
            };
            level(&caller, &target, setting)
        })
        .collect();
    let priorities = compact(levels.iter().copied());
    let mut groups: BTreeMap<(u32, Locality), Vec<&Candidate<'_>>> = BTreeMap::new();
    for (c, lvl) in candidates.iter().zip(&levels) {
        let priority = priorities.get(lvl).copied().unwrap_or(0);
        groups
            .entry((priority, c.locality.clone()))
            .or_default()
            .push(c);
    }
    let distribute = setting
        .filter(|s| s.enabled != Some(false))
        .and_then(|s| distribute_rule(s, caller.locality));
    let keys: Vec<(u32, Locality)> = groups.keys().cloned().collect();
    let overrides: Option<Vec<u32>> = distribute.map(|rule| {
        let counts: Vec<(Locality, u32)> = keys
            .iter()
            .map(|k| {
                (
                    k.1.clone(),
                    u32::try_from(groups[k].len()).unwrap_or(u32::MAX),
                )
            })
            .collect();
        distribute_weights(rule, &counts)
    });
    let mut endpoints = Vec::new();
    for (i, ((priority, locality), members)) in groups.into_iter().enumerate() {
        let healthy_weight: u32 = members
            .iter()
            .filter(|c| c.healthy)
            .map(|c| c.weight.max(1))
            .fold(0u32, u32::saturating_add);
        let weight = match &overrides {
            Some(w) if w[i] == 0 => continue,
            Some(w) => w[i],
            None => healthy_weight.max(1),
        };
        let mut members = members;
        members.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        let lb_endpoints: Vec<LbEndpoint> = members
            .iter()
            .map(|c| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(&c.address, c.port)),
                    ..Default::default()
                })),
                health_status: if c.healthy {
                    HealthStatus::Healthy
                } else {
                    HealthStatus::Unhealthy
                } as i32,
                load_balancing_weight: Some(u32v(c.weight.max(1))),
                ..Default::default()
            })
            .collect();
        endpoints.push(LocalityLbEndpoints {
            locality: Some(EnvoyLocality {
                region: locality.region.clone(),
                zone: locality.zone.clone(),
                sub_zone: locality.subzone.clone(),
            }),
            lb_endpoints,
            load_balancing_weight: Some(u32v(weight)),
            priority,
            ..Default::default()
        });
    }
    // Keep only priorities that still have endpoints contiguous after
    // `distribute` dropped localities.
    let used = compact(endpoints.iter().map(|e| e.priority));
    for e in &mut endpoints {
        e.priority = used.get(&e.priority).copied().unwrap_or(0);
    }
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints,
        ..Default::default()
    }
}
