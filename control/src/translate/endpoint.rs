//! EDS: the endpoints of every EDS cluster the proxy sees. Local endpoints
//! and endpoints of clusters on the proxy's network are sent directly;
//! a cluster on another network is represented by its east-west gateway,
//! weighted by that cluster's healthy endpoint count. Every locality carries
//! its locality, a priority relative to the proxy, and a
//! `load_balancing_weight` (gRPC drops localities without one).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality as EnvoyLocality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

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
    /// Istio's `istio.workload` endpoint metadata
    /// (`NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER`), so
    /// a caller's TCP metrics can name the destination without a peer
    /// metadata exchange.
    pub workload: Option<String>,
}

/// Key of Istio's workload metadata in `filter_metadata["istio"]`.
pub const ISTIO_WORKLOAD_KEY: &str = "workload";

/// Istio's `workload` endpoint metadata value for an instance of a service
/// in `namespace` owned by `cluster`. The workload name is not part of the
/// registry record, so it is the instance's canonical service (what Istio
/// itself falls back to for workloads without an owner name).
pub fn workload_metadata(
    labels: &BTreeMap<String, String>,
    namespace: &str,
    cluster: &str,
) -> String {
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| labels.get(*k).filter(|v| !v.is_empty()))
            .cloned()
    };
    let canonical_service = get(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_default();
    let canonical_revision = get(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_string());
    // `;` separates the fields: a value carrying one would shift them.
    let clean = |v: &str| v.replace(';', "_");
    format!(
        "{};{};{};{};{}",
        clean(&canonical_service),
        clean(namespace),
        clean(&canonical_service),
        clean(&canonical_revision),
        clean(cluster)
    )
}

/// `filter_metadata["istio"].workload = value`.
fn istio_metadata(value: &str) -> Metadata {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        ISTIO_WORKLOAD_KEY.to_string(),
        Value {
            kind: Some(Kind::StringValue(value.to_string())),
        },
    );
    let mut meta = Metadata::default();
    meta.filter_metadata.insert(
        "istio".to_string(),
        Struct {
            fields: fields.into_iter().collect(),
        },
    );
    meta
}

/// Cluster load assignments for the EDS clusters named in `names`.
pub fn load_assignments(ctx: &Context<'_>, names: &Names) -> Vec<ClusterLoadAssignment> {
    load_assignments_as(ctx, names, |a| a)
}

/// [`load_assignments`], each passed through `each` as soon as it is
/// built (the generator encodes it there). A thousand assignments with
/// their endpoints' metadata are about 13 MB as messages, and only a tenth
/// of that encoded, so they are never all held as messages at once.
pub fn load_assignments_as<T>(
    ctx: &Context<'_>,
    names: &Names,
    mut each: impl FnMut(ClusterLoadAssignment) -> T,
) -> Vec<T> {
    let eastwest = ctx.role() == ProxyRole::EastWest;
    if eastwest {
        let mut out: Vec<ClusterLoadAssignment> = eastwest_targets(ctx)
            .iter()
            .filter(|t| names.contains(&t.name) && is_eds(t))
            .map(|t| assignment(ctx, t, true))
            .collect();
        out.extend(super::tunnel::assignments(ctx, names));
        out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        out.dedup_by(|a, b| a.cluster_name == b.cluster_name);
        return out.into_iter().map(each).collect();
    }
    let mut targets: Vec<_> = outbound_targets(ctx)
        .into_iter()
        .filter(|t| names.contains(&t.name) && is_eds(t))
        .collect();
    // Stable, so the first of equal names is kept, as when sorting the
    // built assignments.
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    targets.dedup_by(|a, b| a.name == b.name);
    targets
        .iter()
        .map(|t| each(assignment(ctx, t, false)))
        .collect()
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
            workload: Some(workload_metadata(
                &i.labels,
                &svc.namespace,
                &ctx.inputs.local.cluster_id,
            )),
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
                    workload: Some(workload_metadata(
                        &e.labels,
                        &svc.namespace,
                        &remote.cluster,
                    )),
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
        let workload = Some(format!(
            ";{};;;{}",
            svc.namespace.replace(';', "_"),
            remote.cluster.replace(';', "_")
        ));
        if let Some((host, port)) = super::tunnel::entry_for(ctx, remote) {
            // Every tunnelled peer in one locality is the same local
            // gateway endpoint: merge instead of listing it twice.
            match out
                .iter_mut()
                .find(|c| c.address == host && c.port == port && c.locality == remote.locality)
            {
                Some(c) => c.weight = c.weight.saturating_add(healthy),
                None => out.push(Candidate {
                    address: host,
                    port,
                    locality: remote.locality.clone(),
                    network: remote.network.clone(),
                    labels: None,
                    weight: healthy,
                    healthy: true,
                    workload,
                }),
            }
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
                // The gateway stands for a whole cluster: its workloads'
                // names are not one name, but cluster and namespace are.
                workload: workload.clone(),
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
                metadata: c.workload.as_deref().map(istio_metadata),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn workload_metadata_follows_istio_canonical_labels() {
        let l = labels(&[("app", "reviews"), ("version", "v2")]);
        assert_eq!(
            workload_metadata(&l, "bookinfo", "east"),
            "reviews;bookinfo;reviews;v2;east"
        );
        let l = labels(&[
            ("app", "reviews"),
            ("service.istio.io/canonical-name", "reviews-canon"),
            ("service.istio.io/canonical-revision", "r7"),
        ]);
        assert_eq!(
            workload_metadata(&l, "ns", "c"),
            "reviews-canon;ns;reviews-canon;r7;c"
        );
        assert_eq!(
            workload_metadata(&labels(&[("app", "a;b")]), "ns", "c"),
            "a_b;ns;a_b;latest;c"
        );
    }

    /// What the control plane emits is what the gateway reads back.
    #[test]
    fn gateway_parses_emitted_metadata() {
        let l = labels(&[("app", "ratings"), ("version", "v1")]);
        let meta = istio_metadata(&workload_metadata(&l, "shop", "west"));
        let cla = ClusterLoadAssignment {
            cluster_name: "outbound|9080||ratings.shop.svc.cluster.local".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address("10.0.0.7", 9080)),
                        ..Default::default()
                    })),
                    metadata: Some(meta),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let parsed = isthmus_gateway::config::load_assignment_from_proto(&cla).expect("parses");
        let addr = "10.0.0.7:9080".parse().expect("addr");
        let w = parsed.workload_of(addr).expect("workload on the endpoint");
        assert_eq!(w.name, "ratings");
        assert_eq!(w.namespace, "shop");
        assert_eq!(w.app, "ratings");
        assert_eq!(w.version, "v1");
        assert_eq!(w.canonical_service, "ratings");
        assert_eq!(w.canonical_revision, "v1");
        assert_eq!(w.cluster, "west");
    }
}
