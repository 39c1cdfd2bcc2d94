//! `ClusterLoadAssignment` → localities, priorities and endpoints.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment,
};
use serde::{Serialize, Serializer};

use crate::metrics::workload::{PeerInterner, Workload};

use super::common::socket_addr;
use super::{ConfigError, Ctx};

/// Envoy's default overprovisioning factor, in percent (1.4).
pub const DEFAULT_OVERPROVISIONING: u32 = 140;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct LocalityName {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Healthy, or unknown (Envoy routes to unknown hosts).
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    pub weight: u32,
    pub health: Health,
    /// Who serves at this address, from Istio's
    /// `metadata.filter_metadata["istio"].workload`: the destination of
    /// calls whose peer never describes itself (TCP, or HTTP without a
    /// peer metadata header).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_workload"
    )]
    pub workload: Option<Arc<Workload>>,
}

impl LoadAssignment {
    /// The workload serving at `addr`, when EDS described it.
    pub fn workload_of(&self, addr: SocketAddr) -> Option<Arc<Workload>> {
        self.localities
            .iter()
            .flat_map(|l| &l.endpoints)
            .find(|e| e.address == addr)
            .and_then(|e| e.workload.clone())
    }
}

fn serialize_workload<S: Serializer>(w: &Option<Arc<Workload>>, s: S) -> Result<S::Ok, S::Error> {
    match w {
        Some(w) => s.serialize_str(&format!(
            "{};{};{};{};{}",
            w.name, w.namespace, w.canonical_service, w.canonical_revision, w.cluster
        )),
        None => s.serialize_none(),
    }
}

/// Endpoint workloads of every load assignment, deduplicated and bounded
/// like peers (a control plane could otherwise grow the label space
/// without limit); past the bound endpoints are simply not described.
fn endpoint_workloads() -> &'static PeerInterner {
    static INTERNER: OnceLock<PeerInterner> = OnceLock::new();
    INTERNER.get_or_init(PeerInterner::default)
}

/// Istio's `NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER`.
/// App and version are the canonical service and revision, as Istio's
/// stats read them from endpoint metadata.
pub fn parse_istio_workload(value: &str) -> Option<Workload> {
    let parts: Vec<&str> = value.split(';').collect();
    let [name, namespace, canonical_service, canonical_revision, cluster] = parts[..] else {
        return None;
    };
    let (canonical_service, canonical_revision) = (
        canonical_service.to_string(),
        canonical_revision.to_string(),
    );
    Some(Workload {
        name: name.to_string(),
        namespace: namespace.to_string(),
        app: canonical_service.clone(),
        version: canonical_revision.clone(),
        cluster: cluster.to_string(),
        canonical_service,
        canonical_revision,
        ..Workload::default()
    })
}

fn endpoint_workload(
    ctx: &Ctx,
    field: &str,
    ep: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint,
) -> Result<Option<Arc<Workload>>, ConfigError> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let Some(v) = ep
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("istio"))
        .and_then(|s| s.fields.get("workload"))
    else {
        return Ok(None);
    };
    let field = format!("{field}.metadata.filter_metadata[\"istio\"].workload");
    let Some(Kind::StringValue(s)) = &v.kind else {
        return Err(ctx.err(field, "must be a string"));
    };
    let Some(w) = parse_istio_workload(s) else {
        return Err(ctx.err(
            field,
            format!("{s:?} is not NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER"),
        ));
    };
    Ok(endpoint_workloads().intern(w))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalityEndpoints {
    pub locality: LocalityName,
    pub priority: u32,
    /// `load_balancing_weight`; when any locality has one, locality-weighted
    /// balancing is on and localities without one get no traffic (Envoy).
    pub weight: Option<u32>,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadAssignment {
    pub cluster_name: String,
    pub localities: Vec<LocalityEndpoints>,
    /// Percent; 140 means Envoy's 1.4.
    pub overprovisioning_factor: u32,
}

pub fn load_assignment_from_proto(
    cla: &ClusterLoadAssignment,
) -> Result<LoadAssignment, ConfigError> {
    let ctx = Ctx::new("ClusterLoadAssignment", &cla.cluster_name);
    load_assignment_with_ctx(&ctx, "", cla)
}

pub(crate) fn load_assignment_with_ctx(
    ctx: &Ctx,
    prefix: &str,
    cla: &ClusterLoadAssignment,
) -> Result<LoadAssignment, ConfigError> {
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    for (li, loc) in cla.endpoints.iter().enumerate() {
        let lf = format!("{prefix}endpoints[{li}]");
        if loc.lb_config.is_some() {
            return Err(ctx.err(
                format!("{lf}.lb_config"),
                "per-locality lb_config is not supported",
            ));
        }
        let weight = match &loc.load_balancing_weight {
            Some(w) if w.value == 0 => {
                return Err(ctx.err(format!("{lf}.load_balancing_weight"), "must be at least 1"))
            }
            Some(w) => Some(w.value),
            None => None,
        };
        let mut endpoints = Vec::with_capacity(loc.lb_endpoints.len());
        for (ei, ep) in loc.lb_endpoints.iter().enumerate() {
            let ef = format!("{lf}.lb_endpoints[{ei}]");
            let endpoint = match &ep.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                Some(HostIdentifier::EndpointName(_)) => {
                    return Err(ctx.err(&ef, "named endpoints are not supported"))
                }
                None => return Err(ctx.err(&ef, "endpoint is required")),
            };
            let address = socket_addr(
                ctx,
                &format!("{ef}.endpoint.address"),
                endpoint.address.as_ref(),
            )?;
            if address.port() == 0 {
                return Err(ctx.err(
                    format!("{ef}.endpoint.address"),
                    "endpoint port 0 is not connectable",
                ));
            }
            let weight = match &ep.load_balancing_weight {
                Some(w) if w.value == 0 => {
                    return Err(ctx.err(format!("{ef}.load_balancing_weight"), "must be at least 1"))
                }
                Some(w) => w.value,
                None => 1,
            };
            let health = match HealthStatus::try_from(ep.health_status) {
                Ok(HealthStatus::Unknown | HealthStatus::Healthy) => Health::Healthy,
                Ok(HealthStatus::Degraded) => Health::Degraded,
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout) => {
                    Health::Unhealthy
                }
                Err(_) => {
                    return Err(ctx.err(
                        format!("{ef}.health_status"),
                        format!("unknown health status {}", ep.health_status),
                    ))
                }
            };
            let workload = endpoint_workload(ctx, &ef, ep)?;
            endpoints.push(EndpointConfig {
                address,
                weight,
                health,
                workload,
            });
        }
        let locality = loc
            .locality
            .as_ref()
            .map(|l| LocalityName {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        localities.push(LocalityEndpoints {
            locality,
            priority: loc.priority,
            weight,
            endpoints,
        });
    }
    // Envoy requires priorities to be contiguous from 0.
    let mut prios: Vec<u32> = localities.iter().map(|l| l.priority).collect();
    prios.sort_unstable();
    prios.dedup();
    for (i, p) in prios.iter().enumerate() {
        if *p as usize != i {
            return Err(ctx.err(
                format!("{prefix}endpoints"),
                format!("priorities must be contiguous from 0; found {prios:?}"),
            ));
        }
    }
    let mut overprovisioning_factor = DEFAULT_OVERPROVISIONING;
    if let Some(policy) = &cla.policy {
        if !policy.drop_overloads.is_empty() {
            return Err(ctx.err(
                format!("{prefix}policy.drop_overloads"),
                "drop_overloads is not supported",
            ));
        }
        if let Some(f) = &policy.overprovisioning_factor {
            if f.value == 0 {
                return Err(ctx.err(
                    format!("{prefix}policy.overprovisioning_factor"),
                    "must be positive",
                ));
            }
            overprovisioning_factor = f.value;
        }
    }
    Ok(LoadAssignment {
        cluster_name: cla.cluster_name.clone(),
        localities,
        overprovisioning_factor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address::PortSpecifier, Address, Metadata, SocketAddress,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, LbEndpoint, LocalityLbEndpoints};
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    fn cla(workload: Option<Kind>) -> ClusterLoadAssignment {
        let metadata = workload.map(|kind| {
            let mut m = Metadata::default();
            m.filter_metadata.insert(
                "istio".into(),
                Struct {
                    fields: [("workload".to_string(), Value { kind: Some(kind) })]
                        .into_iter()
                        .collect(),
                },
            );
            m
        });
        ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: "10.1.2.3".into(),
                                port_specifier: Some(PortSpecifier::PortValue(15443)),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    metadata,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn addr() -> SocketAddr {
        "10.1.2.3:15443".parse().expect("addr")
    }

    #[test]
    fn endpoint_without_metadata_has_no_workload() {
        let la = load_assignment_from_proto(&cla(None)).expect("parses");
        assert!(la.workload_of(addr()).is_none());
    }

    #[test]
    fn east_west_form_carries_namespace_and_cluster() {
        let la =
            load_assignment_from_proto(&cla(Some(Kind::StringValue(";bookinfo;;;west".into()))))
                .expect("parses");
        let w = la.workload_of(addr()).expect("workload");
        assert_eq!(w.name, "");
        assert_eq!(w.namespace, "bookinfo");
        assert_eq!(w.cluster, "west");
        assert!(la
            .workload_of("10.1.2.3:1".parse().expect("addr"))
            .is_none());
        let json = serde_json::to_string(&la).expect("serializes");
        assert!(json.contains(";bookinfo;;;west"), "{json}");
    }

    #[test]
    fn malformed_workload_metadata_is_rejected_with_its_field() {
        let e = load_assignment_from_proto(&cla(Some(Kind::StringValue("a;b".into()))))
            .expect_err("two fields");
        assert!(e.to_string().contains("filter_metadata"), "{e}");
        let e = load_assignment_from_proto(&cla(Some(Kind::NumberValue(1.0))))
            .expect_err("not a string");
        assert!(e.to_string().contains("must be a string"), "{e}");
    }
}
