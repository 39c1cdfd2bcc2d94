//! `Cluster` → discovery, load balancing, upstream TLS, limits, outlier detection.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as PbLbPolicy},
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, transport_socket, RoutingPriority,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use serde::Serialize;

use super::common::{common_tls, duration, unpack, Validation};
use super::dns_cluster::{dns_discovery, DnsDiscovery, DnsKind};
use super::endpoint::{load_assignment_with_ctx, LoadAssignment};
use super::origination::{take_origination, Origination};
use super::{ConfigError, Ctx};

const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// Endpoints arrive as a `ClusterLoadAssignment` named `service_name`.
    Eds {
        service_name: String,
    },
    Static(LoadAssignment),
    /// `ORIGINAL_DST`: the one host is the downstream connection's original
    /// destination (before an iptables REDIRECT).
    OriginalDst,
    /// STRICT_DNS / LOGICAL_DNS: hostnames the data plane resolves itself.
    Dns(DnsDiscovery),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    /// SNI to send; `None` sends none.
    pub sni: Option<String>,
    /// `Some("default")` presents the workload certificate.
    pub cert_secret: Option<String>,
    pub validation: Validation,
    pub alpn: Vec<String>,
    /// TLS origination toward a server outside the mesh (web PKI checks);
    /// `None` for mesh mTLS (SPIFFE checks against the bundle).
    pub origination: Option<Origination>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakerThresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    /// Retries in flight to the cluster at once (Istio's `maxRetries`);
    /// ignored when `retry_budget` is set.
    pub max_retries: u32,
    pub retry_budget: Option<RetryBudget>,
}

/// Envoy's retry budget: retries in flight may be `per_million` of the
/// cluster's active and pending requests, and never fewer than
/// `min_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryBudget {
    pub per_million: u32,
    pub min_concurrency: u32,
}

impl CircuitBreakerThresholds {
    /// How many retries may be in flight with `active` requests (in flight
    /// or waiting for a connection) to the cluster.
    pub fn retry_limit(&self, active: u64) -> u64 {
        match self.retry_budget {
            Some(b) => {
                (active * u64::from(b.per_million) / 1_000_000).max(u64::from(b.min_concurrency))
            }
            None => u64::from(self.max_retries),
        }
    }
}

impl Default for CircuitBreakerThresholds {
    fn default() -> Self {
        // Envoy's defaults.
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    /// When false, local-origin failures (connect errors) count as 5xx/gateway errors.
    pub split_external_local_origin_errors: bool,
    /// Envoy's success-rate detector; `None` when `enforcing_success_rate`
    /// is 0 (Istio's translation), on by default as in Envoy.
    pub success_rate: Option<SuccessRateConfig>,
}

/// Envoy's `success_rate_*` outlier settings: every `interval`, among hosts
/// with at least `request_volume` requests (needing `minimum_hosts` of
/// them), a host whose success rate is below
/// `mean − stdev_factor/1000 × stdev` is ejected with probability
/// `enforcing`%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SuccessRateConfig {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub stdev_factor: u32,
    pub enforcing: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    pub circuit_breakers: CircuitBreakerThresholds,
    pub outlier: Option<OutlierConfig>,
    pub http: HttpUpstreamOptions,
    /// `metadata.filter_metadata["isthmus"].tunnel == "quic"`: connections to
    /// this cluster's endpoints (peer east-west gateways) ride the QUIC
    /// tunnel, with TCP as the fallback.
    pub tunnel: bool,
    /// TCP keepalive on upstream connections (DestinationRule
    /// `connectionPool.tcp.tcpKeepalive`).
    pub tcp_keepalive: Option<super::TcpKeepalive>,
}

impl ClusterConfig {
    /// The EDS resource name this cluster waits for, if any.
    pub fn eds_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            Discovery::Static(_) | Discovery::OriginalDst | Discovery::Dns(_) => None,
        }
    }
}

pub fn cluster_from_proto(c: &Cluster) -> Result<ClusterConfig, ConfigError> {
    let ctx = Ctx::new("Cluster", &c.name);
    if c.name.is_empty() {
        return Err(ctx.err("name", "cluster name is empty"));
    }
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| ctx.err("type", format!("unknown discovery type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            return Err(ctx.err(
                "cluster_type",
                format!("custom cluster type {:?} is not supported", t.name),
            ))
        }
    };
    let discovery = match kind {
        DiscoveryType::Eds => {
            let eds = c.eds_cluster_config.as_ref();
            if let Some(source) = eds.and_then(|e| e.eds_config.as_ref()) {
                match &source.config_source_specifier {
                    Some(ConfigSourceSpecifier::Ads(_)) | None => {}
                    Some(_) => {
                        return Err(ctx.err(
                            "eds_cluster_config.eds_config",
                            "only ADS is supported as the EDS config source",
                        ))
                    }
                }
            }
            let service_name = eds
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            Discovery::Eds { service_name }
        }
        DiscoveryType::Static => {
            let la = c.load_assignment.as_ref().ok_or_else(|| {
                ctx.err("load_assignment", "a STATIC cluster needs load_assignment")
            })?;
            Discovery::Static(load_assignment_with_ctx(&ctx, "load_assignment.", la)?)
        }
        DiscoveryType::StrictDns => Discovery::Dns(dns_discovery(&ctx, c, DnsKind::Strict)?),
        DiscoveryType::LogicalDns => Discovery::Dns(dns_discovery(&ctx, c, DnsKind::Logical)?),
        DiscoveryType::OriginalDst => {
            if c.load_assignment.is_some() {
                return Err(ctx.err(
                    "load_assignment",
                    "an ORIGINAL_DST cluster takes its host from the connection, not from endpoints",
                ));
            }
            if let Some(
                envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig::OriginalDstLbConfig(
                    o,
                ),
            ) = &c.lb_config
            {
                if o.use_http_header
                    || !o.http_header_name.is_empty()
                    || o.upstream_port_override.is_some()
                    || o.metadata_key.is_some()
                {
                    return Err(ctx.err(
                    "original_dst_lb_config",
                    "only the connection's original destination is supported (no HTTP header, metadata key or port override)",
                ));
                }
            }
            Discovery::OriginalDst
        }
    };
    let lb_policy = match PbLbPolicy::try_from(c.lb_policy) {
        // The host is given by the connection; nothing to balance.
        Ok(PbLbPolicy::ClusterProvided) if discovery == Discovery::OriginalDst => {
            LbPolicy::RoundRobin
        }
        Ok(_) if discovery == Discovery::OriginalDst => {
            return Err(ctx.err(
                "lb_policy",
                "an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED",
            ))
        }
        Ok(PbLbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(PbLbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(PbLbPolicy::Random) => LbPolicy::Random,
        Ok(PbLbPolicy::RingHash) => LbPolicy::RingHash,
        Ok(PbLbPolicy::Maglev) => LbPolicy::Maglev,
        Ok(other) => {
            return Err(ctx.err(
                "lb_policy",
                format!("{} is not supported", other.as_str_name()),
            ))
        }
        Err(_) => return Err(ctx.err("lb_policy", format!("unknown lb_policy {}", c.lb_policy))),
    };
    if c.load_balancing_policy.is_some() {
        return Err(ctx.err(
            "load_balancing_policy",
            "typed load balancing policies are not supported; use lb_policy",
        ));
    }
    let connect_timeout = duration(
        &ctx,
        "connect_timeout",
        c.connect_timeout.as_ref(),
        Duration::from_secs(5),
    )?;
    if connect_timeout.is_zero() {
        return Err(ctx.err("connect_timeout", "must be positive"));
    }
    let tls = match &c.transport_socket {
        None => None,
        Some(ts) => upstream_tls(&ctx, ts)?,
    };
    if !c.transport_socket_matches.is_empty() {
        return Err(ctx.err(
            "transport_socket_matches",
            "not supported; use transport_socket",
        ));
    }
    let mut circuit_breakers = CircuitBreakerThresholds::default();
    if let Some(cb) = &c.circuit_breakers {
        for (i, t) in cb.thresholds.iter().enumerate() {
            // HIGH priority only applies to HTTP routes with priority; TCP uses DEFAULT.
            if t.priority != RoutingPriority::Default as i32 {
                continue;
            }
            let f = format!("circuit_breakers.thresholds[{i}]");
            if let Some(v) = &t.max_connections {
                circuit_breakers.max_connections = v.value;
            }
            if let Some(v) = &t.max_pending_requests {
                circuit_breakers.max_pending_requests = v.value;
            }
            if let Some(v) = &t.max_requests {
                circuit_breakers.max_requests = v.value;
            }
            if let Some(v) = &t.max_retries {
                circuit_breakers.max_retries = v.value;
            }
            if let Some(b) = &t.retry_budget {
                // Envoy's defaults: 20%, at least 3.
                let percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
                if !(0.0..=100.0).contains(&percent) {
                    return Err(ctx.err(
                        format!("{f}.retry_budget.budget_percent"),
                        format!("must be within 0 and 100, got {percent}"),
                    ));
                }
                if b.budget_interval.is_some() {
                    return Err(ctx.err(
                        format!("{f}.retry_budget.budget_interval"),
                        "a budget over a time window is not supported; the budget counts the requests in flight",
                    ));
                }
                circuit_breakers.retry_budget = Some(RetryBudget {
                    per_million: (percent * 10_000.0).round() as u32,
                    min_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
                });
            }
            // The first thresholds of the priority apply (Envoy).
            break;
        }
    }
    let outlier = match &c.outlier_detection {
        None => None,
        Some(o) => {
            let pct = o
                .max_ejection_percent
                .as_ref()
                .map(|v| v.value)
                .unwrap_or(10);
            if pct > 100 {
                return Err(ctx.err(
                    "outlier_detection.max_ejection_percent",
                    "must be at most 100",
                ));
            }
            let interval = duration(
                &ctx,
                "outlier_detection.interval",
                o.interval.as_ref(),
                Duration::from_secs(10),
            )?;
            let base = duration(
                &ctx,
                "outlier_detection.base_ejection_time",
                o.base_ejection_time.as_ref(),
                Duration::from_secs(30),
            )?;
            let max = duration(
                &ctx,
                "outlier_detection.max_ejection_time",
                o.max_ejection_time.as_ref(),
                Duration::from_secs(300).max(base),
            )?;
            if max < base {
                return Err(ctx.err(
                    "outlier_detection.max_ejection_time",
                    "must not be smaller than base_ejection_time",
                ));
            }
            Some(OutlierConfig {
                interval,
                base_ejection_time: base,
                max_ejection_time: max,
                max_ejection_percent: pct,
                consecutive_5xx: o.consecutive_5xx.as_ref().map(|v| v.value).unwrap_or(5),
                consecutive_gateway_failure: o
                    .consecutive_gateway_failure
                    .as_ref()
                    .map(|v| v.value)
                    .unwrap_or(5),
                consecutive_local_origin_failure: o
                    .consecutive_local_origin_failure
                    .as_ref()
                    .map(|v| v.value)
                    .unwrap_or(5),
                split_external_local_origin_errors: o.split_external_local_origin_errors,
                success_rate: success_rate(&ctx, o)?,
            })
        }
    };
    let http = http_options(&ctx, &c.typed_extension_protocol_options)?;
    let tunnel = tunnel_mode(&ctx, c)?;
    let tcp_keepalive = super::keepalive::tcp_keepalive(&ctx, c)?;
    Ok(ClusterConfig {
        name: c.name.clone(),
        discovery,
        lb_policy,
        connect_timeout,
        tls,
        circuit_breakers,
        outlier,
        http,
        tunnel,
        tcp_keepalive,
    })
}

fn success_rate(
    ctx: &Ctx,
    o: &envoy_types::pb::envoy::config::cluster::v3::OutlierDetection,
) -> Result<Option<SuccessRateConfig>, ConfigError> {
    let get = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map(|v| v.value).unwrap_or(default)
    };
    let enforcing = get(&o.enforcing_success_rate, 100);
    if enforcing > 100 {
        return Err(ctx.err(
            "outlier_detection.enforcing_success_rate",
            "is a percentage: must be at most 100",
        ));
    }
    if enforcing == 0 {
        return Ok(None);
    }
    let minimum_hosts = get(&o.success_rate_minimum_hosts, 5);
    if minimum_hosts == 0 {
        return Err(ctx.err(
            "outlier_detection.success_rate_minimum_hosts",
            "must be at least 1 (a mean over no hosts is meaningless)",
        ));
    }
    Ok(Some(SuccessRateConfig {
        minimum_hosts,
        request_volume: get(&o.success_rate_request_volume, 100).max(1),
        stdev_factor: get(&o.success_rate_stdev_factor, 1900),
        enforcing,
    }))
}

fn tunnel_mode(ctx: &Ctx, c: &Cluster) -> Result<bool, ConfigError> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let Some(v) = c
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("isthmus"))
        .and_then(|s| s.fields.get("tunnel"))
    else {
        return Ok(false);
    };
    match &v.kind {
        Some(Kind::StringValue(s)) if s == "quic" => Ok(true),
        Some(Kind::StringValue(s)) if s == "tcp" || s.is_empty() => Ok(false),
        _ => Err(ctx.err(
            "metadata.filter_metadata[\"isthmus\"].tunnel",
            "must be \"quic\" or \"tcp\"",
        )),
    }
}

/// The upstream HTTP protocol a cluster speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
    /// Whatever the downstream request used.
    Downstream,
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HttpUpstreamOptions {
    pub protocol: UpstreamProtocol,
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
}

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn http_options(
    ctx: &Ctx,
    m: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any>,
) -> Result<HttpUpstreamOptions, ConfigError> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options::{
            explicit_http_config::ProtocolConfig, UpstreamProtocolOptions as U,
        },
        HttpProtocolOptions,
    };
    let mut out = HttpUpstreamOptions {
        idle_timeout: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    for (name, any) in m {
        let f = format!("typed_extension_protocol_options[{name:?}]");
        if name != HTTP_PROTOCOL_OPTIONS
            && any.type_url != <HttpProtocolOptions as prost::Name>::type_url()
        {
            return Err(ctx.err(
                f,
                "only envoy.extensions.upstreams.http.v3.HttpProtocolOptions is supported",
            ));
        }
        let o: HttpProtocolOptions = unpack(ctx, &f, any)?;
        out.protocol = match &o.upstream_protocol_options {
            None => UpstreamProtocol::Http1,
            Some(U::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                Some(ProtocolConfig::HttpProtocolOptions(_)) | None => UpstreamProtocol::Http1,
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(ctx.err(
                        format!("{f}.explicit_http_config"),
                        "HTTP/3 upstreams are not supported",
                    ))
                }
            },
            Some(U::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::Downstream,
            // ALPN negotiation is not wired up: HTTP/1.1 always works.
            Some(U::AutoConfig(_)) => UpstreamProtocol::Http1,
        };
        if let Some(common) = &o.common_http_protocol_options {
            if let Some(d) = &common.idle_timeout {
                let d = duration(
                    ctx,
                    &format!("{f}.common_http_protocol_options.idle_timeout"),
                    Some(d),
                    Duration::ZERO,
                )?;
                out.idle_timeout = (!d.is_zero()).then_some(d);
            }
            out.max_requests_per_connection = common
                .max_requests_per_connection
                .as_ref()
                .map(|v| v.value)
                .filter(|v| *v > 0);
        }
    }
    Ok(out)
}

fn upstream_tls(
    ctx: &Ctx,
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> Result<Option<UpstreamTls>, ConfigError> {
    let any = match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None if ts.name == RAW_TRANSPORT_SOCKET => return Ok(None),
        None => return Err(ctx.err("transport_socket.typed_config", "typed_config is required")),
    };
    if any
        .type_url
        .ends_with("envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")
    {
        return Ok(None);
    }
    if !ts.name.is_empty() && ts.name != TLS_TRANSPORT_SOCKET {
        return Err(ctx.err(
            "transport_socket.name",
            format!(
                "transport socket {:?} is not supported; use {TLS_TRANSPORT_SOCKET}",
                ts.name
            ),
        ));
    }
    let up: UpstreamTlsContext = unpack(ctx, "transport_socket.typed_config", any)?;
    let f = "transport_socket.typed_config.common_tls_context";
    let mut common_in = up.common_tls_context.clone().unwrap_or_default();
    let mut origination = take_origination(ctx, f, &mut common_in)?;
    let common = common_tls(ctx, f, Some(&common_in))?;
    let validation = match (common.validation, &origination) {
        (Some(v), _) => v,
        // Only a caCertificates file: read when the cluster is built.
        (None, Some(o)) if o.ca_file.is_some() => Validation {
            secret: None,
            inline_roots: Vec::new(),
            san_matchers: Vec::new(),
        },
        (None, _) => {
            return Err(ctx.err(
                f,
                "an upstream TLS context must validate the peer (validation_context, a caCertificates file, or SDS \"ROOTCA\")",
            ))
        }
    };
    // Anything but the mesh bundle (and the workload certificate) is TLS
    // origination toward a server outside the mesh, checked by name.
    let mesh =
        validation.secret.as_deref() == Some(super::ROOT_CA_SECRET) || common.cert_secret.is_some();
    if origination.is_none() && !mesh {
        origination = Some(Origination {
            ca_file: None,
            dns_sans: Vec::new(),
            client_cert: None,
        });
    }
    if up.auto_host_sni {
        return Err(ctx.err(
            "transport_socket.typed_config.auto_host_sni",
            "not supported; set sni",
        ));
    }
    Ok(Some(UpstreamTls {
        sni: Some(up.sni).filter(|s| !s.is_empty()),
        cert_secret: common.cert_secret,
        validation,
        alpn: common.alpn,
        origination,
    }))
}
