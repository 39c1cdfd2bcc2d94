//! `Listener` → address, listener filters, filter chains.

use std::net::{IpAddr, SocketAddr};
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

use super::common::{duration, socket_addr, unpack};
use super::http::{http_from_proto, HttpConfig, HTTP_CONNECTION_MANAGER};
use super::{ConfigError, Ctx};

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
const HTTP_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const ORIGINAL_DST_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Whether the `tls_inspector` listener filter runs (SNI and TLS detection).
    pub tls_inspector: bool,
    /// Whether the `http_inspector` listener filter runs (protocol
    /// sniffing: `http/1.0`, `http/1.1` or `h2c` as application protocol;
    /// crate::listener::sniff).
    pub http_inspector: bool,
    pub listener_filters_timeout: Duration,
    pub filter_chains: Vec<FilterChainConfig>,
    pub default_chain: Option<FilterChainConfig>,
    /// The `original_dst` listener filter (or `use_original_dst`): chains
    /// are matched against the destination the connection had before an
    /// iptables REDIRECT (`SO_ORIGINAL_DST`).
    pub original_dst: bool,
    /// `use_original_dst`: a redirected connection is handed to the
    /// listener whose address is its original destination, if any.
    pub use_original_dst: bool,
    /// `bind_to_port`; `false` listeners only receive hand-offs.
    pub bind_to_port: bool,
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
    /// `prefix_ranges` on the (original) destination address; empty matches any.
    pub prefix_ranges: Vec<CidrRange>,
    /// Exact names or `*.suffix` wildcards; empty matches any.
    pub server_names: Vec<String>,
    pub transport_protocol: Option<TransportProtocol>,
    pub application_protocols: Vec<String>,
}

/// An address prefix (`CidrRange`), normalised so host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CidrRange {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl CidrRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.address, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask_bits(
                u128::from(u32::from(net)),
                u128::from(u32::from(a)),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                mask_bits(u128::from(net), u128::from(a), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

fn mask_bits(net: u128, addr: u128, width: u8, len: u8) -> bool {
    let len = len.min(width);
    if len == 0 {
        return true;
    }
    let shift = u32::from(width - len);
    (net >> shift) == (addr >> shift)
}

pub use super::server_tls::DownstreamTls;

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
    if l.transparent.as_ref().is_some_and(|b| b.value) {
        return Err(ctx.err(
            "transparent",
            "IP_TRANSPARENT (TPROXY interception) is not supported; capture with iptables REDIRECT",
        ));
    }
    let use_original_dst = l.use_original_dst.as_ref().is_some_and(|b| b.value);
    let bind_to_port = l.bind_to_port.as_ref().is_none_or(|b| b.value);
    // Envoy adds the original_dst listener filter itself when use_original_dst is set.
    let mut original_dst = use_original_dst;
    let mut tls_inspector = false;
    let mut http_inspector = false;
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
        } else if lf.name == HTTP_INSPECTOR || type_url == Some(HTTP_INSPECTOR_TYPE) {
            if lf.filter_disabled.is_some() {
                return Err(ctx.err(format!("{f}.filter_disabled"), "not supported"));
            }
            http_inspector = true;
        } else if lf.name == ORIGINAL_DST || type_url == Some(ORIGINAL_DST_TYPE) {
            if lf.filter_disabled.is_some() {
                return Err(ctx.err(format!("{f}.filter_disabled"), "not supported"));
            }
            original_dst = true;
        } else {
            return Err(ctx.err(
                &f,
                format!(
                    "listener filter {:?} is not supported; only {TLS_INSPECTOR}, {HTTP_INSPECTOR} and {ORIGINAL_DST}",
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
            || (!c.matcher.application_protocols.is_empty() && !http_inspector)
    });
    if needs_inspector && !tls_inspector {
        return Err(ctx.err(
            "listener_filters",
            "filter chains match on server_names/transport_protocol/application_protocols, which needs the tls_inspector listener filter (or http_inspector for plaintext application protocols)",
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
        http_inspector,
        listener_filters_timeout,
        filter_chains,
        default_chain,
        original_dst,
        use_original_dst,
        bind_to_port,
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
        for (i, r) in m.prefix_ranges.iter().enumerate() {
            matcher
                .prefix_ranges
                .push(cidr(ctx, &format!("{mf}.prefix_ranges[{i}]"), r)?);
        }
        if !m.source_prefix_ranges.is_empty()
            || !m.direct_source_prefix_ranges.is_empty()
            || !m.source_ports.is_empty()
            || m.source_type != 0
            || !m.address_suffix.is_empty()
        {
            return Err(ctx.err(
                &mf,
                "only destination_port, prefix_ranges, server_names, transport_protocol and application_protocols are supported",
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

fn cidr(
    ctx: &Ctx,
    field: &str,
    r: &envoy_types::pb::envoy::config::core::v3::CidrRange,
) -> Result<CidrRange, ConfigError> {
    let address: IpAddr = r.address_prefix.parse().map_err(|_| {
        ctx.err(
            format!("{field}.address_prefix"),
            format!("{:?} is not an IP address", r.address_prefix),
        )
    })?;
    let width = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match &r.prefix_len {
        None => width,
        Some(v) if v.value <= width => v.value,
        Some(v) => {
            return Err(ctx.err(
                format!("{field}.prefix_len"),
                format!("{} is longer than the address ({width} bits)", v.value),
            ))
        }
    };
    // Envoy masks the host bits; so do we, so equal ranges compare equal.
    let mut range = CidrRange {
        address,
        prefix_len: prefix_len as u8,
    };
    range.address = match address {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - prefix_len)
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if prefix_len == 0 {
                0
            } else {
                u128::MAX << (128 - prefix_len)
            };
            IpAddr::V6((bits & mask).into())
        }
    };
    Ok(range)
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
    super::server_tls::downstream_tls_context(ctx, &f, &d).map(Some)
}
