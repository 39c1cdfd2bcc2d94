//! Ingress and egress gateways: one listener per Gateway server port on the
//! gateway's IP, a filter chain per server: plain HTTP (routes over RDS),
//! TLS terminated with SIMPLE, MUTUAL or ISTIO_MUTUAL (matched by SNI),
//! PASSTHROUGH (VirtualService `tls` routes by SNI) and TCP.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use crate::config::host::{resolve_gateway_ref, GatewayRef};
use crate::config::{labels_match, GatewaySpec, Object, Server, ServerTlsMode};

use super::super::naming::gateway_listener;
use super::super::proto::{any, socket_address, tls_transport_socket};
use super::super::rbac;
use super::super::route::{destination_cluster, gateway_route_config, GatewayBinding};
use super::super::services::Protocol;
use super::super::tls::gateway_downstream;
use super::super::Context;
use super::{hcm_filter, hcm_rds, tcp_proxy_filter, tls_inspector};

/// One server of a Gateway that selects this proxy.
pub struct ServerRef<'a> {
    pub gateway: &'a Object<GatewaySpec>,
    pub index: usize,
    pub server: &'a Server,
    pub port: u16,
}

impl ServerRef<'_> {
    fn gateway_key(&self) -> (&str, &str) {
        (self.gateway.namespace(), self.gateway.name())
    }

    /// Hosts without their `namespace/` prefix.
    fn plain_hosts(&self) -> Vec<String> {
        self.server
            .hosts
            .iter()
            .map(|h| h.split_once('/').map(|(_, h)| h).unwrap_or(h).to_string())
            .collect()
    }

    fn https_route_name(&self) -> String {
        format!(
            "https.{}.{}.{}.{}",
            self.port,
            self.gateway.namespace(),
            self.gateway.name(),
            self.server
                .name
                .clone()
                .unwrap_or_else(|| self.index.to_string())
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Https,
    Passthrough,
    Tcp,
}

fn kind(server: &Server) -> Kind {
    let protocol = Protocol::detect(server.port.protocol.as_deref(), server.port.name.as_deref());
    let mode = server.tls.as_ref().and_then(|t| t.mode);
    match (protocol, mode) {
        (_, Some(ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough)) => Kind::Passthrough,
        (p, _) if p.is_http() => Kind::Http,
        (Protocol::Https, _) => Kind::Https,
        (Protocol::Tls, None) => Kind::Passthrough,
        _ => Kind::Tcp,
    }
}

/// Servers of every Gateway whose selector matches the proxy, by port.
pub fn servers<'a>(ctx: &Context<'a>) -> BTreeMap<u16, Vec<ServerRef<'a>>> {
    let mut out: BTreeMap<u16, Vec<ServerRef<'a>>> = BTreeMap::new();
    for gw in ctx.inputs.config.gateways() {
        if gw.spec.selector.is_empty() || !labels_match(&gw.spec.selector, &ctx.proxy.labels) {
            continue;
        }
        for (index, server) in gw.spec.servers.iter().enumerate() {
            let Ok(port) = u16::try_from(server.port.number) else {
                continue;
            };
            out.entry(port).or_default().push(ServerRef {
                gateway: gw,
                index,
                server,
                port,
            });
        }
    }
    out
}

pub fn listeners(ctx: &Context<'_>) -> Vec<Listener> {
    let ip = ctx.proxy.ip.to_string();
    // AuthorizationPolicies selecting the gateway's own workload labels.
    let authz = rbac::applicable(
        &ctx.inputs.config,
        &ctx.inputs.local.root_namespace,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
    );
    let mut out = Vec::new();
    for (port, servers) in servers(ctx) {
        let name = gateway_listener("0.0.0.0", port);
        let mut chains: Vec<FilterChain> = Vec::new();
        let mut http_added = false;
        for s in &servers {
            match kind(s.server) {
                Kind::Http => {
                    if !http_added {
                        http_added = true;
                        chains.push(FilterChain {
                            name: format!("http.{port}"),
                            filters: vec![hcm_filter(rbac::with_http_rbac(
                                hcm_rds(&name, &format!("http.{port}")),
                                &authz,
                            ))],
                            ..Default::default()
                        });
                    }
                }
                Kind::Https => {
                    let tls = s.server.tls.as_ref().map(gateway_downstream);
                    let tls = match tls {
                        Some(Ok(Some(mut tls))) => {
                            // Istio offers HTTP/2 and HTTP/1.1 on HTTPS servers.
                            if let Some(c) = tls.common_tls_context.as_mut() {
                                if c.alpn_protocols.is_empty() {
                                    c.alpn_protocols = vec!["h2".into(), "http/1.1".into()];
                                }
                            }
                            tls
                        }
                        Some(Err(e)) => {
                            tracing::warn!(gateway = %format!("{}/{}", s.gateway.namespace(), s.gateway.name()), port, error = %e, "Gateway server skipped");
                            continue;
                        }
                        _ => {
                            tracing::warn!(gateway = %format!("{}/{}", s.gateway.namespace(), s.gateway.name()), port, "HTTPS server without tls settings skipped");
                            continue;
                        }
                    };
                    let route = s.https_route_name();
                    chains.push(FilterChain {
                        name: route.clone(),
                        filter_chain_match: Some(sni_match(&s.plain_hosts())),
                        transport_socket: Some(tls_transport_socket(any(tls))),
                        filters: vec![hcm_filter(rbac::with_http_rbac(
                            hcm_rds(&name, &route),
                            &authz,
                        ))],
                        ..Default::default()
                    });
                }
                Kind::Passthrough => chains.extend(passthrough_chains(ctx, s)),
                Kind::Tcp => {
                    if let Some(cluster) = tcp_destination(ctx, s) {
                        let tls = s
                            .server
                            .tls
                            .as_ref()
                            .map(gateway_downstream)
                            .and_then(|r| r.ok().flatten());
                        chains.push(FilterChain {
                            name: format!(
                                "tcp.{port}.{}.{}.{}",
                                s.gateway.namespace(),
                                s.gateway.name(),
                                s.index
                            ),
                            filter_chain_match: tls.as_ref().map(|_| sni_match(&s.plain_hosts())),
                            transport_socket: tls.map(|t| tls_transport_socket(any(t))),
                            filters: rbac::chain_filters(
                                &authz,
                                tcp_proxy_filter(&name, &cluster),
                                false,
                            ),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        // Envoy rejects two chains with the same match: keep the first.
        let mut seen = Vec::new();
        chains.retain(|c| {
            let key = format!("{:?}", c.filter_chain_match);
            if seen.contains(&key) {
                tracing::warn!(listener = %name, chain = %c.name, "two Gateway servers claim the same hosts on one port; keeping the first");
                false
            } else {
                seen.push(key);
                true
            }
        });
        if chains.is_empty() {
            continue;
        }
        let needs_sni = chains
            .iter()
            .any(|c| c.filter_chain_match.is_some() || c.transport_socket.is_some());
        out.push(Listener {
            name,
            address: Some(socket_address(&ip, port)),
            listener_filters: if needs_sni {
                vec![tls_inspector()]
            } else {
                Vec::new()
            },
            filter_chains: chains,
            ..Default::default()
        });
    }
    out
}

fn sni_match(hosts: &[String]) -> FilterChainMatch {
    FilterChainMatch {
        server_names: hosts
            .iter()
            .filter(|h| h.as_str() != "*")
            .cloned()
            .collect(),
        ..Default::default()
    }
}

fn bound_to(vs_gateways: &[String], vs_namespace: &str, gateway: (&str, &str)) -> bool {
    vs_gateways.iter().any(|g| {
        resolve_gateway_ref(g, vs_namespace)
            == GatewayRef::Gateway {
                namespace: gateway.0.to_string(),
                name: gateway.1.to_string(),
            }
    })
}

/// PASSTHROUGH: one chain per VirtualService `tls` route bound to the
/// Gateway, matched by its SNI hosts, forwarding the encrypted stream.
fn passthrough_chains(ctx: &Context<'_>, s: &ServerRef<'_>) -> Vec<FilterChain> {
    let mut out = Vec::new();
    for vs in ctx.inputs.config.virtual_services() {
        if !bound_to(&vs.spec.gateways, vs.namespace(), s.gateway_key()) {
            continue;
        }
        for (i, tls) in vs.spec.tls.iter().enumerate() {
            let Some(dest) = tls.route.first() else {
                continue;
            };
            let sni: Vec<String> = tls
                .matches
                .iter()
                .filter(|m| m.port.is_none_or(|p| p == u32::from(s.port)))
                .flat_map(|m| m.sni_hosts.iter().cloned())
                .collect();
            if sni.is_empty() {
                continue;
            }
            let cluster = destination_cluster(ctx, vs.namespace(), &dest.destination, s.port);
            out.push(FilterChain {
                name: format!(
                    "passthrough.{}.{}.{}.{}",
                    s.port,
                    vs.namespace(),
                    vs.name(),
                    i
                ),
                filter_chain_match: Some(sni_match(&sni)),
                filters: vec![tcp_proxy_filter(&cluster, &cluster)],
                ..Default::default()
            });
        }
    }
    out
}

fn tcp_destination(ctx: &Context<'_>, s: &ServerRef<'_>) -> Option<String> {
    ctx.inputs.config.virtual_services().find_map(|vs| {
        if !bound_to(&vs.spec.gateways, vs.namespace(), s.gateway_key()) {
            return None;
        }
        let route = vs.spec.tcp.iter().find(|r| {
            r.matches.is_empty()
                || r.matches
                    .iter()
                    .any(|m| m.port.is_none_or(|p| p == u32::from(s.port)))
        })?;
        let dest = route.route.first()?;
        Some(destination_cluster(
            ctx,
            vs.namespace(),
            &dest.destination,
            s.port,
        ))
    })
}

pub fn route_configs(ctx: &Context<'_>) -> Vec<RouteConfiguration> {
    let mut out = Vec::new();
    for (port, servers) in servers(ctx) {
        let http: Vec<GatewayBinding<'_>> = servers
            .iter()
            .filter(|s| kind(s.server) == Kind::Http)
            .map(|s| GatewayBinding {
                gateway: s.gateway_key(),
                hosts: &s.server.hosts,
                https_redirect: s.server.tls.as_ref().and_then(|t| t.https_redirect) == Some(true),
            })
            .collect();
        if !http.is_empty() {
            out.push(gateway_route_config(
                ctx,
                &format!("http.{port}"),
                &http,
                port,
            ));
        }
        for s in servers.iter().filter(|s| kind(s.server) == Kind::Https) {
            let binding = GatewayBinding {
                gateway: s.gateway_key(),
                hosts: &s.server.hosts,
                https_redirect: false,
            };
            out.push(gateway_route_config(
                ctx,
                &s.https_route_name(),
                &[binding],
                port,
            ));
        }
    }
    out
}
