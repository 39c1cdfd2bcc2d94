//! Proxyless gRPC: a client dialing `xds:///NAME:PORT` asks LDS for
//! `NAME:PORT` and needs an `api_listener` holding a connection manager
//! whose routes come over RDS (ADS) under the same name, router last.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use crate::config::host::{resolve_fqdn, CLUSTER_DOMAIN};

use super::super::proto::any;
use super::super::route::grpc_route_config;
use super::super::services::Service;
use super::super::Context;
use super::hcm_rds;

/// The reachable service and port a `NAME:PORT` target names: the FQDN,
/// `name.ns`, `name.ns.svc`, a short name in the proxy's namespace, or the
/// `clusterset.local` twin.
pub fn resolve_target<'a>(ctx: &Context<'a>, target: &str) -> Option<(&'a Service, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let dots = host.matches('.').count();
    let candidates = [
        resolve_fqdn(host, &ctx.proxy.namespace),
        format!("{host}.svc.{CLUSTER_DOMAIN}"),
        format!("{host}.{CLUSTER_DOMAIN}"),
    ];
    let svc = candidates
        .iter()
        .take(if dots == 0 { 1 } else { 3 })
        .find_map(|h| ctx.inputs.services.get(h))?;
    (ctx.scope.reaches(svc) && svc.port(port).is_some()).then_some((svc, port))
}

pub fn listeners(ctx: &Context<'_>, requested: &BTreeSet<Arc<str>>) -> Vec<Listener> {
    requested
        .iter()
        .filter(|name| resolve_target(ctx, name).is_some())
        .map(|name| Listener {
            name: name.to_string(),
            api_listener: Some(ApiListener {
                api_listener: Some(any(hcm_rds(name, name))),
            }),
            ..Default::default()
        })
        .collect()
}

pub fn route_configs(ctx: &Context<'_>, requested: &BTreeSet<Arc<str>>) -> Vec<RouteConfiguration> {
    requested
        .iter()
        .filter_map(|name| {
            let (svc, port) = resolve_target(ctx, name)?;
            Some(grpc_route_config(ctx, name, svc, port))
        })
        .collect()
}
