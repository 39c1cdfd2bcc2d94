//! RDS: VirtualService HTTP routes as Envoy routes. Outbound HTTP listeners
//! use one route configuration per port (named by the port) with a virtual
//! host per service and every alias of its name; gateways use one per
//! server port; proxyless gRPC one per `HOST:PORT` target.

mod action;
mod fault;
mod matching;

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, virtual_host, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::google::protobuf::BoolValue;

use crate::config::host::{host_matches, resolve_gateway_ref, GatewayRef};
use crate::config::{Object, VirtualServiceSpec};

use super::naming::{host_aliases, outbound_cluster, outbound_route};
use super::proto::{any, secs, FAULT};
use super::services::Service;
use super::Context;

pub use action::destination_cluster;
use action::{apply_header_ops, default_retry_policy, route_action};
pub use fault::fault_config;
use matching::{applicable_matches, route_match};

/// Where a route is being built: the listener port and, on gateways, the
/// Gateway (`namespace/name`) the server belongs to.
#[derive(Debug, Clone, Copy)]
pub struct RouteSite<'a> {
    pub port: u16,
    pub gateway: Option<(&'a str, &'a str)>,
}

/// Outbound route configurations for the given HTTP ports.
pub fn outbound_route_configs(ctx: &Context<'_>, ports: &BTreeSet<u16>) -> Vec<RouteConfiguration> {
    ports
        .iter()
        .map(|&port| {
            let mut seen = BTreeSet::new();
            let mut hosts: Vec<VirtualHost> = ctx
                .reachable_services()
                .filter(|s| {
                    s.port(port)
                        .is_some_and(|p| p.protocol.is_http() || p.sniffed)
                })
                .filter_map(|svc| service_virtual_host(ctx, svc, port, &mut seen))
                .collect();
            hosts.sort_by(|a, b| a.name.cmp(&b.name));
            RouteConfiguration {
                name: outbound_route(port),
                virtual_hosts: hosts,
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            }
        })
        .collect()
}

/// The route configuration a proxyless gRPC client gets for `HOST:PORT`.
pub fn grpc_route_config(
    ctx: &Context<'_>,
    name: &str,
    svc: &Service,
    port: u16,
) -> RouteConfiguration {
    let mut seen = BTreeSet::new();
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: service_virtual_host(ctx, svc, port, &mut seen)
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// The virtual host of one service on one port; aliases already used by
/// another virtual host are left out (Envoy rejects duplicate domains).
fn service_virtual_host(
    ctx: &Context<'_>,
    svc: &Service,
    port: u16,
    seen: &mut BTreeSet<String>,
) -> Option<VirtualHost> {
    let domains: Vec<String> = host_aliases(&svc.hostname, port, &ctx.proxy.namespace)
        .into_iter()
        .filter(|d| seen.insert(d.clone()))
        .collect();
    if domains.is_empty() {
        return None;
    }
    let site = RouteSite {
        port,
        gateway: None,
    };
    let routes = match ctx.scope.virtual_service_for(&svc.hostname) {
        Some(vs) => virtual_service_routes(ctx, vs, site),
        None => vec![default_route(
            ctx,
            &outbound_cluster(port, "", &svc.hostname),
        )],
    };
    Some(VirtualHost {
        name: format!("{}:{}", svc.hostname, port),
        domains,
        routes,
        ..Default::default()
    })
}

/// Istio's route for a service without a VirtualService: everything to the
/// service, no timeout, the default retry policy.
fn default_route(_ctx: &Context<'_>, cluster: &str) -> Route {
    Route {
        name: "default".to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
            timeout: Some(secs(0)),
            retry_policy: Some(default_retry_policy()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Every Envoy route of a VirtualService at `site`, in order.
pub fn virtual_service_routes(
    ctx: &Context<'_>,
    vs: &Object<VirtualServiceSpec>,
    site: RouteSite<'_>,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (index, http) in vs.spec.http.iter().enumerate() {
        let Some(matches) = applicable_matches(ctx, vs.namespace(), http, site) else {
            continue;
        };
        if http.delegate.is_some() {
            tracing::warn!(virtual_service = %format!("{}/{}", vs.namespace(), vs.name()), "delegate VirtualServices are not supported; route skipped");
            continue;
        }
        let action = route_action(ctx, vs.namespace(), http, site.port);
        let name = http
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}.{}", vs.namespace(), vs.name(), index));
        let mut base = Route {
            name,
            action: Some(action),
            ..Default::default()
        };
        if let Some(h) = &http.headers {
            apply_header_ops(
                h.request.as_ref(),
                &mut base.request_headers_to_add,
                &mut base.request_headers_to_remove,
            );
            apply_header_ops(
                h.response.as_ref(),
                &mut base.response_headers_to_add,
                &mut base.response_headers_to_remove,
            );
        }
        if let Some(fault) = &http.fault {
            base.typed_per_filter_config
                .insert(FAULT.to_string(), any(fault_config(fault)));
        }
        if matches.is_empty() {
            out.push(Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                    ..Default::default()
                }),
                ..base
            });
        } else {
            for m in matches {
                out.push(Route {
                    r#match: Some(route_match(m)),
                    ..base.clone()
                });
            }
        }
    }
    out
}

/// One Gateway server's claim on a route configuration.
#[derive(Debug, Clone, Copy)]
pub struct GatewayBinding<'a> {
    /// `(namespace, name)` of the Gateway.
    pub gateway: (&'a str, &'a str),
    pub hosts: &'a [String],
    /// `tls.httpsRedirect` on a plain HTTP server: answer with a redirect
    /// to HTTPS instead of routing.
    pub https_redirect: bool,
}

/// One VirtualService's contribution to a gateway virtual host.
struct HostSource {
    /// The host came from narrowing a wildcard to the server's host.
    narrowed: bool,
    /// Position of the VirtualService in namespace/name order.
    order: usize,
    routes: Vec<Route>,
    https_redirect: bool,
}

/// Gateway route configuration: virtual hosts of the VirtualServices bound
/// to each binding's Gateway whose hosts fall under the server's `hosts`.
pub fn gateway_route_config(
    ctx: &Context<'_>,
    name: &str,
    bindings: &[GatewayBinding<'_>],
    port: u16,
) -> RouteConfiguration {
    // Several VirtualServices may serve one host: their routes are merged,
    // exact hosts first, then by namespace/name.
    let mut by_host: BTreeMap<String, Vec<HostSource>> = BTreeMap::new();
    for binding in bindings {
        let site = RouteSite {
            port,
            gateway: Some(binding.gateway),
        };
        for (order, vs) in ctx.inputs.config.virtual_services().enumerate() {
            let bound = vs.spec.gateways.iter().any(|g| {
                resolve_gateway_ref(g, vs.namespace())
                    == GatewayRef::Gateway {
                        namespace: binding.gateway.0.to_string(),
                        name: binding.gateway.1.to_string(),
                    }
            });
            if !bound || vs.spec.http.is_empty() {
                continue;
            }
            // The effective host of a VirtualService host under a server
            // host is the narrower of the two (`*` under `a.example.com`
            // serves only `a.example.com`).
            let effective: BTreeMap<String, bool> = vs
                .spec
                .hosts
                .iter()
                .flat_map(|host| {
                    binding.hosts.iter().filter_map(move |sh| {
                        let server = sh.split_once('/').map(|(_, h)| h).unwrap_or(sh);
                        if host_matches(server, host) {
                            Some((host.clone(), false))
                        } else if host_matches(host, server) {
                            Some((server.to_string(), true))
                        } else {
                            None
                        }
                    })
                })
                .collect();
            for (host, narrowed) in effective {
                by_host.entry(host).or_default().push(HostSource {
                    narrowed,
                    order,
                    routes: virtual_service_routes(ctx, vs, site),
                    https_redirect: binding.https_redirect,
                });
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut hosts = Vec::new();
    for (host, mut sources) in by_host {
        sources.sort_by_key(|s| (s.narrowed, s.order));
        let domains: Vec<String> = if host == "*" {
            vec!["*".to_string()]
        } else {
            vec![host.clone(), format!("{host}:{port}")]
        };
        let domains: Vec<String> = domains
            .into_iter()
            .filter(|d| seen.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            continue;
        }
        let redirect = sources.iter().any(|s| s.https_redirect);
        hosts.push(VirtualHost {
            name: format!("{host}:{port}"),
            domains,
            routes: sources.into_iter().flat_map(|s| s.routes).collect(),
            require_tls: if redirect {
                virtual_host::TlsRequirementType::All as i32
            } else {
                virtual_host::TlsRequirementType::None as i32
            },
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}
