//! `Listener` → address, listener filters, filter chains.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, FilterChain, Listener,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use serde::Serialize;

use super::common::{common_tls, duration, socket_addr, unpack, Validation};
use super::http::{http_from_proto, HttpConfig, HTTP_CONNECTION_MANAGER};
use super::{ConfigError, Ctx};

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Whether the `tls_inspector` listener filter runs (SNI and TLS detection).
    pub tls_inspector: bool,
    pub listener_filters_timeout: Duration,
    pub filter_chains: Vec<FilterChainConfig>,
    pub default_chain: Option<FilterChainConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportProtocol {
    Tls,
    RawBuffer,
}

/// `filter_chain_match` criteria the data plane evaluates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// Exact names or `*.suffix` wildcards; empty matches any.
    pub server_names: Vec<String>,
    pub transport_protocol: Option<TransportProtocol>,
    pub application_protocols: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownstreamTls {
    pub require_client_certificate: bool,
    /// Always `default`: the local workload certificate.
    pub cert_secret: String,
    pub validation: Option<Validation>,
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TcpRoute {
    Cluster(String),
    Weighted(Vec<(String, u32)>),
}

impl TcpRoute {
    pub fn clusters(&self) -> Vec<&str> {
        match self {
            TcpRoute::Cluster(c) => vec![c.as_str()],
            TcpRoute::Weighted(w) => w.iter().map(|(c, _)| c.as_str()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    pub route: TcpRoute,
    pub idle_timeout: Option<Duration>,
    /// `max_connect_attempts`; `None` uses the proxy-wide default.
    pub max_connect_attempts: Option<u32>,
    /// `access_log`: one line per connection (crate::accesslog).
    pub access_log: Vec<crate::accesslog::AccessLogConfig>,
}

/// The terminal network filter of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkFilter {
    TcpProxy(TcpProxyConfig),
    Http(Box<HttpConfig>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterChainConfig {
    pub name: String,
    pub matcher: ChainMatch,
    /// `Some` terminates TLS on this chain.
    pub tls: Option<DownstreamTls>,
    /// `envoy.filters.network.rbac` filters before the terminal one, in order.
    pub rbac: Vec<crate::rbac::RbacFilter>,
    pub filter: NetworkFilter,
}

pub fn listener_from_proto(l: &Listener) -> Result<ListenerConfig, ConfigError> {
    let ctx = Ctx::new("Listener", &l.name);
    if l.name.is_empty() {
        return Err(ctx.err("name", "listener name is empty"));
    }
    if l.api_listener.is_some() {
        return Err(ctx.err(
            "api_listener",
            "API listeners are for gRPC clients, not this data plane",
        ));
    }
    let address = socket_addr(&ctx, "address", l.address.as_ref())?;
    if !l.additional_addresses.is_empty() {
        return Err(ctx.err(
            "additional_addresses",
            "not supported; use one listener per address",
        ));
    }
    if l.filter_chain_matcher.is_some() {
        return Err(ctx.err(
            "filter_chain_matcher",
            "not supported; use filter_chain_match",
        ));
    }
    if l.use_original_dst.as_ref().is_some_and(|b| b.value) {
        return Err(ctx.err(
            "use_original_dst",
            "transparent capture is not supported yet; bind explicit outbound listeners (INTERCEPTION_MODE=NONE)",
        ));
    }
    let mut tls_inspector = false;
    for (i, lf) in l.listener_filters.iter().enumerate() {
        let f = format!("listener_filters[{i}]");
        let type_url = match &lf.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any)) => Some(any.type_url.as_str()),
            Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ctx.err(&f, "listener filter config discovery is not supported"))
            }
            None => None,
        };
        if lf.name == TLS_INSPECTOR || type_url == Some(TLS_INSPECTOR_TYPE) {
            if lf.filter_disabled.is_some() {
                return Err(ctx.err(format!("{f}.filter_disabled"), "not supported"));
            }
            tls_inspector = true;
        } else {
            return Err(ctx.err(
                &f,
                format!(
                    "listener filter {:?} is not supported; only {TLS_INSPECTOR}",
                    lf.name
                ),
            ));
        }
    }
    let listener_filters_timeout = duration(
        &ctx,
        "listener_filters_timeout",
        l.listener_filters_timeout.as_ref(),
        Duration::from_secs(15),
    )?;
    let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        filter_chains.push(filter_chain(&ctx, &format!("filter_chains[{i}]"), fc)?);
    }
    let default_chain = match &l.default_filter_chain {
        Some(fc) => Some(filter_chain(&ctx, "default_filter_chain", fc)?),
        None => None,
    };
    if filter_chains.is_empty() && default_chain.is_none() {
        return Err(ctx.err(
            "filter_chains",
            "a listener needs at least one filter chain",
        ));
    }
    let needs_inspector = filter_chains.iter().any(|c| {
        !c.matcher.server_names.is_empty()
            || c.matcher.transport_protocol == Some(TransportProtocol::Tls)
            || !c.matcher.application_protocols.is_empty()
    });
    if needs_inspector && !tls_inspector {
        return Err(ctx.err(
            "listener_filters",
            "filter chains match on server_names/transport_protocol/application_protocols, which needs the tls_inspector listener filter",
        ));
    }
    // Two chains with identical criteria make the choice ambiguous; Envoy rejects that too.
    for (i, a) in filter_chains.iter().enumerate() {
        if let Some(j) = filter_chains[..i]
            .iter()
            .position(|b| b.matcher == a.matcher)
        {
            return Err(ctx.err(
                format!("filter_chains[{i}].filter_chain_match"),
                format!("identical to filter_chains[{j}]; multiple chains would match the same connections"),
            ));
        }
    }
    Ok(ListenerConfig {
        name: l.name.clone(),
        address,
        tls_inspector,
        listener_filters_timeout,
        filter_chains,
        default_chain,
    })
}

fn filter_chain(
    ctx: &Ctx,
    field: &str,
    fc: &FilterChain,
) -> Result<FilterChainConfig, ConfigError> {
    let mut matcher = ChainMatch::default();
    if let Some(m) = &fc.filter_chain_match {
        let mf = format!("{field}.filter_chain_match");
        if let Some(p) = &m.destination_port {
            matcher.destination_port = Some(u16::try_from(p.value).map_err(|_| {
                ctx.err(
                    format!("{mf}.destination_port"),
                    format!("{} is not a TCP port", p.value),
                )
            })?);
        }
        if !m.prefix_ranges.is_empty()
            || !m.source_prefix_ranges.is_empty()
            || !m.direct_source_prefix_ranges.is_empty()
            || !m.source_ports.is_empty()
            || m.source_type != 0
            || !m.address_suffix.is_empty()
        {
            return Err(ctx.err(
                &mf,
                "only destination_port, server_names, transport_protocol and application_protocols are supported",
            ));
        }
        for (i, n) in m.server_names.iter().enumerate() {
            let bad = n.is_empty()
                || (n.contains('*') && !(n.starts_with("*.") && n.matches('*').count() == 1));
            if bad {
                return Err(ctx.err(
                    format!("{mf}.server_names[{i}]"),
                    format!("{n:?} is not a server name or a leading \"*.\" wildcard"),
                ));
            }
            matcher.server_names.push(n.to_ascii_lowercase());
        }
        matcher.transport_protocol = match m.transport_protocol.as_str() {
            "" => None,
            "tls" => Some(TransportProtocol::Tls),
            "raw_buffer" => Some(TransportProtocol::RawBuffer),
            other => {
                return Err(ctx.err(
                    format!("{mf}.transport_protocol"),
                    format!("{other:?} is not \"tls\" or \"raw_buffer\""),
                ))
            }
        };
        matcher.application_protocols = m.application_protocols.clone();
    }
    let tls = match &fc.transport_socket {
        None => None,
        Some(ts) => downstream_tls(ctx, &format!("{field}.transport_socket"), ts)?,
    };
    if fc.filters.is_empty() {
        return Err(ctx.err(
            format!("{field}.filters"),
            "a filter chain needs a terminal network filter",
        ));
    }
    // Only RBAC may precede the terminal filter (crate::rbac).
    let last = fc.filters.len() - 1;
    let rbac = crate::rbac::network_filters(ctx, field, &fc.filters[..last])?;
    let nf = &fc.filters[last];
    let ff = format!("{field}.filters[{last}]");
    let any = match &nf.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(ctx.err(&ff, "typed_config is required")),
    };
    let filter = if nf.name == TCP_PROXY || any.type_url == <TcpProxy as prost::Name>::type_url() {
        let tp: TcpProxy = unpack(ctx, &format!("{ff}.typed_config"), any)?;
        NetworkFilter::TcpProxy(tcp_proxy(ctx, &format!("{ff}.typed_config"), &tp)?)
    } else if nf.name == HTTP_CONNECTION_MANAGER
        || any.type_url == <HttpConnectionManager as prost::Name>::type_url()
    {
        let h: HttpConnectionManager = unpack(ctx, &format!("{ff}.typed_config"), any)?;
        NetworkFilter::Http(Box::new(http_from_proto(
            ctx,
            &format!("{ff}.typed_config"),
            &h,
        )?))
    } else {
        return Err(ctx.err(
            &ff,
            format!(
                "network filter {:?} ({}) is not supported; use {TCP_PROXY} or {HTTP_CONNECTION_MANAGER}",
                nf.name, any.type_url
            ),
        ));
    };
    Ok(FilterChainConfig {
        name: fc.name.clone(),
        matcher,
        tls,
        rbac,
        filter,
    })
}

fn tcp_proxy(ctx: &Ctx, field: &str, tp: &TcpProxy) -> Result<TcpProxyConfig, ConfigError> {
    let route = match &tp.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => TcpRoute::Cluster(c.clone()),
        Some(ClusterSpecifier::Cluster(_)) => {
            return Err(ctx.err(format!("{field}.cluster"), "cluster name is empty"))
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            if w.clusters.is_empty() {
                return Err(ctx.err(
                    format!("{field}.weighted_clusters"),
                    "needs at least one cluster",
                ));
            }
            let mut out = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    return Err(ctx.err(
                        format!("{field}.weighted_clusters.clusters[{i}].name"),
                        "empty",
                    ));
                }
                out.push((c.name.clone(), c.weight));
            }
            if out.iter().all(|(_, w)| *w == 0) {
                return Err(ctx.err(format!("{field}.weighted_clusters"), "all weights are zero"));
            }
            TcpRoute::Weighted(out)
        }
        None => return Err(ctx.err(field, "cluster or weighted_clusters is required")),
    };
    if tp.tunneling_config.is_some() {
        return Err(ctx.err(
            format!("{field}.tunneling_config"),
            "HTTP tunneling is not supported yet",
        ));
    }
    let idle_timeout = match &tp.idle_timeout {
        None => Some(Duration::from_secs(3600)),
        Some(d) => {
            let d = duration(
                ctx,
                &format!("{field}.idle_timeout"),
                Some(d),
                Duration::ZERO,
            )?;
            // Envoy: zero disables the idle timeout.
            (!d.is_zero()).then_some(d)
        }
    };
    let max_connect_attempts = match &tp.max_connect_attempts {
        Some(v) if v.value == 0 => {
            return Err(ctx.err(
                format!("{field}.max_connect_attempts"),
                "must be at least 1",
            ))
        }
        Some(v) => Some(v.value),
        None => None,
    };
    Ok(TcpProxyConfig {
        stat_prefix: tp.stat_prefix.clone(),
        route,
        idle_timeout,
        max_connect_attempts,
        access_log: crate::accesslog::config::access_logs_from_proto(
            ctx,
            &format!("{field}.access_log"),
            &tp.access_log,
        )?,
    })
}

fn downstream_tls(
    ctx: &Ctx,
    field: &str,
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> Result<Option<DownstreamTls>, ConfigError> {
    let any = match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None => return Err(ctx.err(format!("{field}.typed_config"), "typed_config is required")),
    };
    if any
        .type_url
        .ends_with("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")
    {
        return Ok(None);
    }
    if !ts.name.is_empty() && ts.name != TLS_TRANSPORT_SOCKET {
        return Err(ctx.err(
            format!("{field}.name"),
            format!(
                "transport socket {:?} is not supported; use {TLS_TRANSPORT_SOCKET}",
                ts.name
            ),
        ));
    }
    let f = format!("{field}.typed_config");
    let d: DownstreamTlsContext = unpack(ctx, &f, any)?;
    let common = common_tls(
        ctx,
        &format!("{f}.common_tls_context"),
        d.common_tls_context.as_ref(),
    )?;
    let cert_secret = common.cert_secret.ok_or_else(|| {
        ctx.err(
            format!("{f}.common_tls_context.tls_certificate_sds_secret_configs"),
            "a server TLS context needs the \"default\" certificate secret",
        )
    })?;
    let require_client_certificate = d
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    if require_client_certificate && common.validation.is_none() {
        return Err(ctx.err(
            format!("{f}.require_client_certificate"),
            "requiring client certificates needs a validation context (SDS \"ROOTCA\")",
        ));
    }
    if d.require_sni.as_ref().is_some_and(|b| b.value) {
        return Err(ctx.err(format!("{f}.require_sni"), "not supported"));
    }
    Ok(Some(DownstreamTls {
        require_client_certificate,
        cert_secret,
        validation: common.validation,
        alpn: common.alpn,
    }))
}
