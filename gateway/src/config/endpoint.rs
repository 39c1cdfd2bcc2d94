//! `ClusterLoadAssignment` → localities, priorities and endpoints.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment,
};
use serde::Serialize;

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
            endpoints.push(EndpointConfig {
                address,
                weight,
                health,
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
