//! Sidecars with traffic capture (`INTERCEPTION_MODE: REDIRECT`), in
//! Istio's shapes. iptables (control/src/inject/capture.rs) sends outbound
//! TCP to `virtualOutbound` (0.0.0.0:15001) and inbound TCP to
//! `virtualInbound` (0.0.0.0:15006); the proxy recovers each connection's
//! original destination (`SO_ORIGINAL_DST`):
//! - outbound: `use_original_dst` hands the connection to the unbound
//!   (`bind_to_port: false`) listener of its destination port, `0.0.0.0_PORT`
//!   (RDS by Host for HTTP, the service's cluster for TCP); anything else
//!   takes the passthrough chain: `PassthroughCluster` (ORIGINAL_DST) when
//!   the outbound traffic policy is ALLOW_ANY, `BlackHoleCluster` when
//!   REGISTRY_ONLY.
//! - inbound: one filter chain per workload port, matched by destination
//!   port, terminating mTLS as PeerAuthentication says, plus passthrough
//!   chains to `InboundPassthroughClusterIpv4` for undeclared ports.
//!
//! Services carry no cluster IP here yet, so TCP services get a
//! `0.0.0.0_PORT` listener too (Istio's shape for services without a VIP):
//! one TCP service per port.
//!
//! The `allow_any` / `block_all` virtual host of every outbound route
//! configuration is added in explicit mode too (Istio does the same).

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, DirectResponseAction, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::google::protobuf::BoolValue;

use isthmus_xds::ProxyRole;

use crate::config::{MtlsMode, OutboundMode};

use super::super::naming::{inbound_cluster, inbound_listener, outbound_listener};
use super::super::proto::{any, duration, secs, socket_address, tls_transport_socket};
use super::super::rbac;
use super::super::scope::mtls_mode;
use super::super::services::{Protocol, ServicePort};
use super::super::tls::istio_mutual_downstream;
use super::super::{Context, ProxyFlavor};
use super::sidecar::{all_outbound_ports, inbound_chains, inbound_ports, outbound_port_listener};
use super::{tcp_proxy_filter, tls_inspector};

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughClusterIpv4";
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether this proxy's traffic is captured by iptables REDIRECT.
pub fn captures(ctx: &Context<'_>) -> bool {
    ctx.role() == ProxyRole::Sidecar
        && ctx.flavor == ProxyFlavor::Envoy
        && ctx
            .proxy
            .interception_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("REDIRECT"))
}

/// Where traffic to destinations outside the registry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundPolicy {
    AllowAny,
    RegistryOnly,
}

/// The Sidecar resource's `outboundTrafficPolicy.mode`, else the mesh-wide
/// `spec.outboundTrafficPolicy.mode`, else ALLOW_ANY (Istio's default).
pub fn outbound_policy(ctx: &Context<'_>) -> OutboundPolicy {
    let sidecar = ctx
        .scope
        .sidecar()
        .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode);
    let mesh = ctx
        .inputs
        .config
        .mesh_config()
        .and_then(|m| m.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode);
    match sidecar.or(mesh) {
        Some(OutboundMode::RegistryOnly) => OutboundPolicy::RegistryOnly,
        Some(OutboundMode::AllowAny) | None => OutboundPolicy::AllowAny,
    }
}

fn passthrough_target(ctx: &Context<'_>) -> &'static str {
    match outbound_policy(ctx) {
        OutboundPolicy::AllowAny => PASSTHROUGH_CLUSTER,
        OutboundPolicy::RegistryOnly => BLACKHOLE_CLUSTER,
    }
}

fn original_dst_filter() -> ListenerFilter {
    ListenerFilter {
        name: ORIGINAL_DST_FILTER.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            OriginalDst {},
        ))),
        ..Default::default()
    }
}

/// Every listener of a capturing sidecar.
pub fn listeners(ctx: &Context<'_>) -> Vec<Listener> {
    let mut out = vec![virtual_outbound(ctx)];
    for (port, info) in all_outbound_ports(ctx) {
        let name = outbound_listener("0.0.0.0", port);
        if let Some(l) = outbound_port_listener(ctx, name, "0.0.0.0", port, &info) {
            out.push(Listener {
                bind_to_port: Some(BoolValue { value: false }),
                ..l
            });
        }
    }
    out.push(virtual_inbound(ctx));
    out
}

fn virtual_outbound(ctx: &Context<'_>) -> Listener {
    let target = passthrough_target(ctx);
    Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket_address("0.0.0.0", OUTBOUND_CAPTURE_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        listener_filters: vec![original_dst_filter()],
        filter_chains: vec![FilterChain {
            name: "PassthroughFilterChain".to_string(),
            filters: vec![tcp_proxy_filter(target, target)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn virtual_inbound(ctx: &Context<'_>) -> Listener {
    let ip = ctx.proxy.ip.to_string();
    let root = &ctx.inputs.local.root_namespace;
    let authz = rbac::applicable(
        &ctx.inputs.config,
        root,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
    );
    let mut chains = Vec::new();
    let mut inspect = false;
    let mut sniff = false;
    for p in inbound_ports(ctx) {
        let name = inbound_listener(&ip, p.target_port);
        let (c, filters) = inbound_chains(ctx, &authz, &p, &name, Some(p.target_port));
        inspect |= !filters.is_empty();
        sniff |= filters
            .iter()
            .any(|f| f.name == super::sniff::HTTP_INSPECTOR);
        chains.extend(c);
    }
    // Ports no service declares: straight to where the client was going,
    // still behind the workload's mTLS mode and authorization policies.
    let passthrough = rbac::chain_filters(
        &authz,
        tcp_proxy_filter(INBOUND_PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER),
        false,
    );
    let mode = mtls_mode(
        &ctx.inputs.config,
        root,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
        0,
    );
    let chain = |suffix: &str, protocol: &str, tls: bool| FilterChain {
        name: format!("{VIRTUAL_INBOUND}-{suffix}"),
        filter_chain_match: (!protocol.is_empty()).then(|| FilterChainMatch {
            transport_protocol: protocol.to_string(),
            ..Default::default()
        }),
        transport_socket: tls.then(|| tls_transport_socket(any(istio_mutual_downstream()))),
        filters: passthrough.clone(),
        ..Default::default()
    };
    match mode {
        MtlsMode::Strict => chains.push(chain("passthrough-mtls", "", true)),
        MtlsMode::Permissive | MtlsMode::Unset | MtlsMode::Disable => {
            inspect = true;
            chains.push(chain("passthrough-mtls", "tls", true));
            chains.push(chain("passthrough", "raw_buffer", false));
        }
    }
    let mut listener_filters = vec![original_dst_filter()];
    if inspect {
        listener_filters.push(tls_inspector());
    }
    if sniff {
        listener_filters.push(super::sniff::http_inspector());
    }
    let mut listener = Listener {
        name: VIRTUAL_INBOUND.to_string(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
        listener_filters,
        filter_chains: chains,
        ..Default::default()
    };
    super::sniff::go_on_as_tcp_after_timeout(&mut listener);
    listener
}

/// `PassthroughCluster` and `BlackHoleCluster` for every sidecar (the
/// outbound route configurations refer to them), the inbound passthrough
/// cluster with capture, and `inbound|PORT||` per workload port.
pub fn sidecar_clusters(ctx: &Context<'_>) -> Vec<Cluster> {
    let mut out = vec![original_dst_cluster(PASSTHROUGH_CLUSTER), black_hole()];
    if captures(ctx) {
        out.push(original_dst_cluster(INBOUND_PASSTHROUGH_CLUSTER));
    }
    for p in inbound_ports(ctx) {
        let (ip, port) = inbound_endpoint(ctx, p.target_port);
        let mut c = inbound_cluster_to(p.target_port, &ip, port);
        if p.sniffed {
            super::super::cluster::use_downstream_protocol(&mut c);
        }
        out.push(c);
    }
    out
}

fn original_dst_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        ..Default::default()
    }
}

fn black_hole() -> Cluster {
    Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: BLACKHOLE_CLUSTER.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `inbound|PORT||` with its one endpoint at `ip:target`.
fn inbound_cluster_to(port: u16, ip: &str, target: u16) -> Cluster {
    let mut c = super::super::cluster::inbound(ip, target);
    let name = inbound_cluster(port);
    c.name = name.clone();
    if let Some(la) = c.load_assignment.as_mut() {
        la.cluster_name = name;
    }
    c
}

/// The Sidecar resource's `ingress` ports, when it declares any: they
/// replace the ports of the services selecting the workload.
pub fn sidecar_ingress_ports(ctx: &Context<'_>) -> Option<Vec<ServicePort>> {
    if ctx.role() != ProxyRole::Sidecar {
        return None;
    }
    let sidecar = ctx.scope.sidecar()?;
    if sidecar.spec.ingress.is_empty() {
        return None;
    }
    let mut out: Vec<ServicePort> = Vec::new();
    for ing in &sidecar.spec.ingress {
        let Ok(number) = u16::try_from(ing.port.number) else {
            continue;
        };
        if out.iter().any(|p| p.target_port == number) {
            continue;
        }
        out.push(ServicePort {
            name: ing.port.name.clone().unwrap_or_default(),
            port: number,
            protocol: Protocol::detect(ing.port.protocol.as_deref(), ing.port.name.as_deref()),
            target_port: number,
            sniffed: super::sniff::is_sniffed(
                ing.port.protocol.as_deref(),
                ing.port.name.as_deref(),
            ),
        });
    }
    Some(out)
}

/// Where the sidecar forwards inbound traffic for `port`: the Sidecar
/// ingress `defaultEndpoint` (`127.0.0.1:PORT`, or `0.0.0.0:PORT` meaning
/// the workload IP), else the application address.
pub fn inbound_endpoint(ctx: &Context<'_>, port: u16) -> (String, u16) {
    let app = (ctx.proxy.app_address.to_string(), port);
    let Some(sidecar) = ctx.scope.sidecar() else {
        return app;
    };
    let Some(endpoint) = sidecar
        .spec
        .ingress
        .iter()
        .find(|i| i.port.number == u32::from(port))
        .and_then(|i| i.default_endpoint.as_deref())
    else {
        return app;
    };
    match parse_endpoint(endpoint) {
        Some((ip, p)) if ip.is_unspecified() => (ctx.proxy.ip.to_string(), p),
        Some((ip, p)) => (ip.to_string(), p),
        None => {
            tracing::warn!(
                sidecar = %sidecar.metadata.name,
                endpoint,
                "Sidecar ingress defaultEndpoint is not IP:PORT (unix sockets are not supported); using the application address"
            );
            app
        }
    }
}

fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.parse().ok()?, port.parse().ok()?))
}

/// Adds Istio's catch-all virtual host to every outbound route
/// configuration: `allow_any` (to `PassthroughCluster`) or `block_all`
/// (502), unless a service already claims `*`.
pub fn add_unknown_host_routes(ctx: &Context<'_>, routes: &mut [RouteConfiguration]) {
    let vhost = unknown_host_vhost(outbound_policy(ctx));
    for rc in routes {
        if rc
            .virtual_hosts
            .iter()
            .any(|v| v.domains.iter().any(|d| d == "*"))
        {
            continue;
        }
        rc.virtual_hosts.push(vhost.clone());
    }
}

fn unknown_host_vhost(policy: OutboundPolicy) -> VirtualHost {
    let prefix = Some(RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    });
    let (name, action) = match policy {
        OutboundPolicy::AllowAny => (
            "allow_any",
            route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    PASSTHROUGH_CLUSTER.to_string(),
                )),
                timeout: Some(secs(0)),
                ..Default::default()
            }),
        ),
        OutboundPolicy::RegistryOnly => (
            "block_all",
            route::Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        ),
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: prefix,
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}
