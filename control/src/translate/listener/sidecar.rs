//! Sidecar listeners without traffic capture (`INTERCEPTION_MODE: NONE`):
//! outbound listeners on `ISTHMUS_OUTBOUND_BIND` for each reachable service
//! port, inbound listeners on the workload IP for each port of the services
//! that select the workload, terminating mTLS as PeerAuthentication says.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};

use crate::config::{labels_match, MtlsMode};

use super::super::authn;
use super::super::naming::{
    inbound_cluster, inbound_listener, outbound_cluster, outbound_listener, outbound_route,
};
use super::super::proto::{any, secs, socket_address, tls_transport_socket, u32v};
use super::super::rbac;
use super::super::route::{destination_cluster, outbound_route_configs};
use super::super::scope::mtls_mode;
use super::super::services::{Service, ServicePort};
use super::super::tls::istio_mutual_downstream;
use super::super::Context;
use super::{hcm_filter, hcm_inline, hcm_rds, sniff, tcp_proxy_filter, tls_inspector};

/// What one outbound port carries.
pub(super) struct OutboundPort<'a> {
    pub(super) http: bool,
    /// A service declares no protocol on this port (and none declares
    /// HTTP): the listener sniffs HTTP and falls back to TCP.
    pub(super) sniffed: bool,
    pub(super) services: Vec<&'a Service>,
}

/// Every port of every reachable service (with capture, listeners are not
/// bound, so they never collide with inbound ones).
pub(super) fn all_outbound_ports<'a>(ctx: &Context<'a>) -> BTreeMap<u16, OutboundPort<'a>> {
    let mut ports: BTreeMap<u16, OutboundPort<'a>> = BTreeMap::new();
    for svc in ctx.reachable_services() {
        for p in &svc.ports {
            let entry = ports.entry(p.port).or_insert_with(|| OutboundPort {
                http: false,
                sniffed: false,
                services: Vec::new(),
            });
            entry.http |= p.protocol.is_http();
            entry.sniffed |= p.sniffed;
            entry.services.push(svc);
        }
    }
    for info in ports.values_mut() {
        info.sniffed &= !info.http;
    }
    ports
}

/// The outbound listener of one service port: HTTP routes (RDS), a TCP
/// proxy, or, for a port without a declared protocol, both behind
/// protocol sniffing (Istio's outbound behaviour for unnamed ports).
pub(super) fn outbound_port_listener(
    ctx: &Context<'_>,
    name: String,
    address: &str,
    port: u16,
    info: &OutboundPort<'_>,
) -> Option<Listener> {
    let http_chain = || FilterChain {
        filters: vec![hcm_filter(hcm_rds(&name, &outbound_route(port)))],
        ..Default::default()
    };
    let tcp_chain = || -> Option<FilterChain> {
        if info.services.len() > 1 {
            tracing::warn!(
                port,
                services = ?info.services.iter().map(|s| s.hostname.as_str()).collect::<Vec<_>>(),
                "several TCP services share an outbound port; without a cluster IP per service the listener can only forward raw TCP to the first"
            );
        }
        let svc = info.services.first()?;
        Some(FilterChain {
            filters: vec![tcp_proxy_filter(&name, &tcp_destination(ctx, svc, port))],
            ..Default::default()
        })
    };
    let listener = Listener {
        name: name.clone(),
        address: Some(socket_address(address, port)),
        ..Default::default()
    };
    if info.http {
        return Some(Listener {
            filter_chains: vec![http_chain()],
            ..listener
        });
    }
    let tcp = tcp_chain()?;
    if info.sniffed {
        let http = FilterChain {
            name: format!("{name}_http"),
            ..http_chain()
        };
        let tcp = FilterChain {
            name: format!("{name}_tcp"),
            ..tcp
        };
        return Some(super::sniff::sniffing(listener, http, tcp));
    }
    Some(Listener {
        filter_chains: vec![tcp],
        ..listener
    })
}

fn outbound_ports<'a>(ctx: &Context<'a>) -> BTreeMap<u16, OutboundPort<'a>> {
    let mut ports = all_outbound_ports(ctx);
    // An outbound listener must not take the address of an inbound one
    // (the workload IP, or the wildcard address, as the outbound bind).
    let bind = ctx.proxy.outbound_bind;
    if bind == ctx.proxy.ip || bind.is_unspecified() {
        for p in inbound_ports(ctx) {
            ports.remove(&p.target_port);
        }
    }
    ports
}

/// The service ports served by this workload: the `ingress` listeners of
/// the Sidecar resource that applies to it if it has any, else the ports of
/// mesh-internal services in its namespace whose selector matches its
/// labels, or that list its IP.
pub fn inbound_ports(ctx: &Context<'_>) -> Vec<ServicePort> {
    if let Some(ports) = super::capture::sidecar_ingress_ports(ctx) {
        return ports;
    }
    let ip = ctx.proxy.ip.to_string();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for svc in ctx.inputs.services.iter() {
        if !svc.is_mesh_internal() || svc.namespace != ctx.proxy.namespace {
            continue;
        }
        let selected = svc
            .selector
            .as_ref()
            .is_some_and(|sel| !sel.is_empty() && labels_match(sel, &ctx.proxy.labels));
        let instance = svc.local.iter().find(|i| i.address == ip);
        if !selected && instance.is_none() {
            continue;
        }
        for p in &svc.ports {
            let target = instance.map(|i| i.port_for(p)).unwrap_or(p.target_port);
            if seen.insert(target) {
                out.push(ServicePort {
                    target_port: target,
                    ..p.clone()
                });
            }
        }
    }
    out
}

pub fn listeners(ctx: &Context<'_>) -> Vec<Listener> {
    if super::capture::captures(ctx) {
        return super::capture::listeners(ctx);
    }
    let bind = ctx.proxy.outbound_bind.to_string();
    let mut out = Vec::new();
    for (port, info) in outbound_ports(ctx) {
        let name = outbound_listener(&bind, port);
        out.extend(outbound_port_listener(ctx, name, &bind, port, &info));
    }
    out.extend(inbound_listeners(ctx));
    out
}

/// A TCP service's destination: the first TCP route of its VirtualService
/// that applies to the port, else the service itself.
pub(super) fn tcp_destination(ctx: &Context<'_>, svc: &Service, port: u16) -> String {
    if let Some(vs) = ctx.scope.virtual_service_for(&svc.hostname) {
        let route = vs.spec.tcp.iter().find(|r| {
            r.matches.is_empty()
                || r.matches
                    .iter()
                    .any(|m| m.port.is_none_or(|p| p == u32::from(port)))
        });
        if let Some(dest) = route.and_then(|r| r.route.first()) {
            return destination_cluster(ctx, vs.namespace(), &dest.destination, port);
        }
    }
    outbound_cluster(port, "", &svc.hostname)
}

fn inbound_listeners(ctx: &Context<'_>) -> Vec<Listener> {
    let ip = ctx.proxy.ip.to_string();
    let root = &ctx.inputs.local.root_namespace;
    let authz = rbac::applicable(
        &ctx.inputs.config,
        root,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
    );
    inbound_ports(ctx)
        .into_iter()
        .map(|p| {
            let port = p.target_port;
            let name = inbound_listener(&ip, port);
            let (chains, listener_filters) = inbound_chains(ctx, &authz, &p, &name, None);
            let mut l = Listener {
                name,
                address: Some(socket_address(&ip, port)),
                filter_chains: chains,
                listener_filters,
                ..Default::default()
            };
            sniff::go_on_as_tcp_after_timeout(&mut l);
            l
        })
        .collect()
}

/// The filter chains serving one inbound port, mTLS as PeerAuthentication
/// says, and the listener filters they need. With `match_port` (one
/// `virtualInbound` listener for every port) each chain also matches the
/// destination port. A port without a declared protocol is sniffed as
/// Istio does inbound: HTTP over mTLS when the client's ALPN says so
/// (`istio-http/1.1`, `istio-h2`), HTTP in plaintext when the HTTP
/// inspector recognises it, TCP otherwise.
pub(super) fn inbound_chains(
    ctx: &Context<'_>,
    authz: &[&crate::config::Object<crate::config::AuthorizationPolicySpec>],
    p: &ServicePort,
    name: &str,
    match_port: Option<u16>,
) -> (
    Vec<FilterChain>,
    Vec<envoy_types::pb::envoy::config::listener::v3::ListenerFilter>,
) {
    let root = &ctx.inputs.local.root_namespace;
    let port = p.target_port;
    let cluster = inbound_cluster(port);
    let http_stack = || {
        let mut hcm = rbac::with_http_rbac(hcm_inline(name, inbound_routes(&cluster, port)), authz);
        // jwt_authn before RBAC, local_ratelimit after it.
        authn::add_inbound_filters(ctx, port, &mut hcm);
        rbac::chain_filters(authz, hcm_filter(hcm), true)
    };
    let tcp_stack = || rbac::chain_filters(authz, tcp_proxy_filter(name, &cluster), false);
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // (chain name suffix, filters, ALPN over mTLS, protocols in plaintext);
    // an empty list matches anything.
    let stacks = if p.protocol.is_http() {
        vec![("", http_stack(), Vec::new(), Vec::new())]
    } else if p.sniffed {
        vec![
            (
                "_http",
                http_stack(),
                strings(&sniff::MESH_HTTP_ALPN),
                strings(&sniff::SNIFFED_HTTP_PROTOCOLS),
            ),
            ("_tcp", tcp_stack(), Vec::new(), Vec::new()),
        ]
    } else {
        vec![("", tcp_stack(), Vec::new(), Vec::new())]
    };
    let mode = mtls_mode(
        &ctx.inputs.config,
        root,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
        port,
    );
    let chain_match = |protocol: &str, alpn: &[String]| {
        (!protocol.is_empty() || match_port.is_some() || !alpn.is_empty()).then(|| {
            FilterChainMatch {
                destination_port: match_port.map(|p| u32v(u32::from(p))),
                transport_protocol: protocol.to_string(),
                application_protocols: alpn.to_vec(),
                ..Default::default()
            }
        })
    };
    let mut chains = Vec::new();
    let strict = mode == MtlsMode::Strict;
    for (suffix, filters, mesh_alpn, plain_protocols) in &stacks {
        chains.push(FilterChain {
            name: format!("{name}_mtls{suffix}"),
            filter_chain_match: chain_match(if strict { "" } else { "tls" }, mesh_alpn),
            transport_socket: Some(tls_transport_socket(any(istio_mutual_downstream()))),
            filters: filters.clone(),
            ..Default::default()
        });
        // DISABLE still terminates mesh mTLS: traffic from other clusters
        // always arrives as mTLS through the east-west gateway, and mesh
        // clients originate ISTIO_MUTUAL unless a DestinationRule says
        // otherwise (docs/security.md).
        if !strict {
            chains.push(FilterChain {
                name: format!("{name}_plaintext{suffix}"),
                filter_chain_match: chain_match("raw_buffer", plain_protocols),
                filters: filters.clone(),
                ..Default::default()
            });
        }
    }
    let mut listener_filters = Vec::new();
    if !strict || stacks.len() > 1 {
        listener_filters.push(tls_inspector());
    }
    if stacks.len() > 1 && !strict {
        listener_filters.push(sniff::http_inspector());
    }
    (chains, listener_filters)
}

fn inbound_routes(cluster: &str, port: u16) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: "default".to_string(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.to_string(),
                    )),
                    timeout: Some(secs(0)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route_configs(ctx: &Context<'_>) -> Vec<RouteConfiguration> {
    let ports = if super::capture::captures(ctx) {
        all_outbound_ports(ctx)
    } else {
        outbound_ports(ctx)
    };
    let http_ports: BTreeSet<u16> = ports
        .into_iter()
        .filter(|(_, info)| info.http || info.sniffed)
        .map(|(port, _)| port)
        .collect();
    let mut out = outbound_route_configs(ctx, &http_ports);
    super::capture::add_unknown_host_routes(ctx, &mut out);
    out
}
