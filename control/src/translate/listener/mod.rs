//! LDS (and the RDS names listeners refer to): one module per proxy kind.
//! Shared here: the network filters and listener filters every kind uses.

pub mod capture;
pub mod eastwest;
pub mod gateway;
pub mod grpc;
pub mod sidecar;
pub mod sniff;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};

use isthmus_xds::{Names, ProxyRole};

use super::proto::{ads, any, FAULT, HTTP_CONNECTION_MANAGER, ROUTER, TCP_PROXY, TLS_INSPECTOR};
use super::{Context, ProxyFlavor};

/// Every listener the proxy should see (gRPC `HOST:PORT` names included
/// when asked for by name).
pub fn listeners(ctx: &Context<'_>, names: &Names) -> Vec<Listener> {
    let mut out = match (ctx.flavor, ctx.role()) {
        (ProxyFlavor::Grpc, _) => Vec::new(),
        (_, ProxyRole::Sidecar) => sidecar::listeners(ctx),
        (_, ProxyRole::EastWest) => eastwest::listeners(ctx),
        (_, ProxyRole::Ingress | ProxyRole::Egress) => gateway::listeners(ctx),
    };
    if let Some(mesh) = ctx.inputs.config.mesh_config() {
        let settings = super::telemetry::TelemetrySettings::from_mesh(&mesh.spec);
        super::telemetry::decorate(&settings, &mut out);
    }
    if let Names::Some(requested) = names {
        out.extend(grpc::listeners(ctx, requested));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// Every route configuration the proxy's listeners refer to.
pub fn route_configs(ctx: &Context<'_>, names: &Names) -> Vec<RouteConfiguration> {
    let mut out = match (ctx.flavor, ctx.role()) {
        (ProxyFlavor::Grpc, _) | (_, ProxyRole::EastWest) => Vec::new(),
        (_, ProxyRole::Sidecar) => sidecar::route_configs(ctx),
        (_, ProxyRole::Ingress | ProxyRole::Egress) => gateway::route_configs(ctx),
    };
    if let Names::Some(requested) = names {
        out.extend(grpc::route_configs(ctx, requested));
    }
    out.retain(|r| names.contains(&r.name));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

pub(crate) fn network_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

pub(crate) fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    network_filter(
        TCP_PROXY,
        any(TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        }),
    )
}

pub(crate) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// The HTTP filters of outbound and gateway connection managers: fault
/// injection (configured per route) and the router, last.
pub(crate) fn outbound_http_filters() -> Vec<HttpFilter> {
    vec![
        http_filter(FAULT, any(HttpFault::default())),
        http_filter(ROUTER, any(Router::default())),
    ]
}

/// A connection manager whose routes come over RDS (ADS).
pub(crate) fn hcm_rds(stat_prefix: &str, route_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_name.to_string(),
        })),
        http_filters: outbound_http_filters(),
        ..Default::default()
    }
}

/// A connection manager with its routes inline and only the router.
pub(crate) fn hcm_inline(stat_prefix: &str, routes: RouteConfiguration) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![http_filter(ROUTER, any(Router::default()))],
        ..Default::default()
    }
}

pub(crate) fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    network_filter(HTTP_CONNECTION_MANAGER, any(hcm))
}
