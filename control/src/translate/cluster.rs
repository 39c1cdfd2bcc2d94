//! CDS: `outbound|PORT|SUBSET|HOST` per reachable service port and
//! DestinationRule subset, carrying the traffic policy; `inbound|PORT||` for
//! a sidecar's application; SNI-named clusters on east-west gateways.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::{thresholds::RetryBudget as ThresholdsRetryBudget, Thresholds},
    cluster::{
        self, ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig,
        LbPolicy, MaglevLbConfig, RingHashLbConfig,
    },
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions,
};
use envoy_types::pb::envoy::config::core::v3::{
    HealthStatus, Http1ProtocolOptions, Http2ProtocolOptions,
    HttpProtocolOptions as CoreHttpOptions, TcpKeepalive,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
        UseDownstreamHttpConfig,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt64Value;

use isthmus_xds::ProxyRole;

use crate::config::{
    ClientTlsMode, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, Location, OutlierDetection, Resolution, SimpleLb,
};

use super::naming::{inbound_cluster, outbound_cluster, outbound_sni, spiffe_id};
use super::policy::{effective, EffectivePolicy};
use super::proto::{
    ads, any, duration, secs, socket_address, tls_transport_socket, u32v, HTTP_PROTOCOL_OPTIONS,
};
use super::services::{Service, ServicePort};
use super::tls::{istio_mutual_upstream, user_upstream};
use super::{Context, ProxyFlavor};

/// Istio's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Istio leaves circuit breakers effectively open unless a DestinationRule
/// sets them; Envoy's own defaults (1024) would throttle busy services.
const UNLIMITED: u32 = u32::MAX;

/// One upstream cluster to generate: a service port and subset as one
/// proxy sees it. CDS and EDS are both derived from it, so they agree.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub name: String,
    pub service: &'a Service,
    pub port: &'a ServicePort,
    pub subset: String,
    /// `None` for the whole service.
    pub subset_labels: Option<BTreeMap<String, String>>,
    pub policy: EffectivePolicy,
}

pub(crate) fn targets_for<'a>(
    service: &'a Service,
    rule: Option<&'a DestinationRuleSpec>,
    name: impl Fn(u16, &str) -> String,
) -> Vec<Target<'a>> {
    let mut out = Vec::new();
    for port in &service.ports {
        out.push(Target {
            name: name(port.port, ""),
            service,
            port,
            subset: String::new(),
            subset_labels: None,
            policy: effective(rule, port.port, ""),
        });
        for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
            out.push(Target {
                name: name(port.port, &subset.name),
                service,
                port,
                subset: subset.name.clone(),
                subset_labels: Some(subset.labels.clone()),
                policy: effective(rule, port.port, &subset.name),
            });
        }
    }
    out
}

/// Outbound clusters of every reachable service port and subset.
pub fn outbound_targets<'a>(ctx: &Context<'a>) -> Vec<Target<'a>> {
    ctx.reachable_services()
        .flat_map(|svc| {
            let rule = ctx
                .scope
                .destination_rule(&svc.hostname, &svc.namespace)
                .map(|r| &r.spec);
            targets_for(svc, rule, |port, subset| {
                outbound_cluster(port, subset, &svc.hostname)
            })
        })
        .collect()
}

/// An east-west gateway's clusters: one per exported local service port and
/// subset, named by the SNI remote clients send.
pub fn eastwest_targets<'a>(ctx: &Context<'a>) -> Vec<Target<'a>> {
    ctx.inputs
        .services
        .iter()
        .filter(|svc| svc.exported && svc.is_mesh_internal())
        .flat_map(|svc| {
            let rule = ctx
                .scope
                .destination_rule(&svc.hostname, &svc.namespace)
                .map(|r| &r.spec);
            targets_for(svc, rule, |port, subset| {
                outbound_sni(port, subset, &svc.hostname)
            })
        })
        .collect()
}

/// Every cluster the proxy should see.
pub fn clusters(ctx: &Context<'_>) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = match ctx.role() {
        ProxyRole::EastWest => eastwest_targets(ctx)
            .iter()
            .map(|t| eds_cluster(&t.name, DEFAULT_CONNECT_TIMEOUT))
            .chain(super::tunnel::clusters(ctx, DEFAULT_CONNECT_TIMEOUT))
            .collect(),
        _ => outbound_targets(ctx)
            .iter()
            .filter_map(|t| outbound(ctx, t))
            .collect(),
    };
    if ctx.role() == ProxyRole::Sidecar && ctx.flavor == ProxyFlavor::Envoy {
        out.extend(super::listener::capture::sidecar_clusters(ctx));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

fn eds_cluster(name: &str, connect_timeout: StdDuration) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(duration(connect_timeout)),
        ..Default::default()
    }
}

/// `inbound|PORT||`: the application on the workload, where the sidecar
/// forwards after terminating mTLS.
pub fn inbound(app_address: &str, port: u16) -> Cluster {
    let name = inbound_cluster(port);
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(app_address, port)),
                        ..Default::default()
                    })),
                    health_status: HealthStatus::Healthy as i32,
                    ..Default::default()
                }],
                load_balancing_weight: Some(u32v(1)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The outbound cluster for `target`, or `None` when the proxy cannot use
/// it (DNS and passthrough services for proxyless gRPC).
pub fn outbound(ctx: &Context<'_>, target: &Target<'_>) -> Option<Cluster> {
    let svc = target.service;
    let policy = &target.policy;
    let pool = policy.connection_pool.as_ref();
    let connect_timeout = pool
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout.as_ref())
        .map(|d| d.as_std())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let mut c = match (svc.location, svc.resolution) {
        (Location::MeshExternal, Resolution::Dns | Resolution::DnsRoundRobin) => {
            if ctx.flavor == ProxyFlavor::Grpc && svc.resolution == Resolution::Dns {
                return None;
            }
            dns_cluster(target, connect_timeout)
        }
        (Location::MeshExternal, Resolution::None) => {
            if ctx.flavor == ProxyFlavor::Grpc {
                return None;
            }
            Cluster {
                name: target.name.clone(),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                    DiscoveryType::OriginalDst as i32,
                )),
                lb_policy: LbPolicy::ClusterProvided as i32,
                connect_timeout: Some(duration(connect_timeout)),
                ..Default::default()
            }
        }
        _ => eds_cluster(&target.name, connect_timeout),
    };
    if c.lb_policy != LbPolicy::ClusterProvided as i32 {
        apply_load_balancer(&mut c, policy.load_balancer.as_ref(), ctx.flavor);
    }
    if ctx.flavor == ProxyFlavor::Envoy {
        c.circuit_breakers = Some(circuit_breakers(pool, policy.retry_budget.as_ref()));
        if let Some(keepalive) = pool
            .and_then(|p| p.tcp.as_ref())
            .and_then(|t| t.tcp_keepalive.as_ref())
        {
            let secs_of = |d: &Option<crate::config::Duration>| {
                d.as_ref()
                    .map(|d| u32v(u32::try_from(d.as_std().as_secs()).unwrap_or(u32::MAX)))
            };
            c.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: keepalive.probes.map(u32v),
                    keepalive_time: secs_of(&keepalive.time),
                    keepalive_interval: secs_of(&keepalive.interval),
                }),
                ..Default::default()
            });
        }
        if let Some(options) = http_options(target.port, pool) {
            c.typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(options));
        }
        if let Some(outlier) = &policy.outlier_detection {
            c.outlier_detection = Some(outlier_detection(outlier));
            // Istio: minHealthPercent (default 0) is the panic threshold once
            // outlier detection is on, so ejected hosts stay ejected.
            let panic = outlier.min_health_percent.map(|p| p.get()).unwrap_or(0);
            c.common_lb_config
                .get_or_insert_with(CommonLbConfig::default)
                .healthy_panic_threshold = Some(Percent {
                value: f64::from(panic),
            });
        }
        let distribute = policy
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.locality_lb_setting.as_ref())
            .is_some_and(|s| s.enabled != Some(false) && !s.distribute.is_empty());
        if distribute {
            c.common_lb_config
                .get_or_insert_with(CommonLbConfig::default)
                .locality_config_specifier = Some(
                cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    cluster::common_lb_config::LocalityWeightedLbConfig {},
                ),
            );
        }
    }
    if let Some(tls) = upstream_tls(ctx, target) {
        c.transport_socket = Some(tls_transport_socket(tls));
    }
    Some(c)
}

/// Istio's default `meshConfig.dnsRefreshRate`; with `respect_dns_ttl` the
/// answers' TTLs decide, this only bounds names answered without one.
const DNS_REFRESH_RATE: StdDuration = StdDuration::from_secs(60);

// Envoy deprecated the DNS fields of `Cluster` in favour of the
// `envoy.clusters.dns` extension; Istio still sends them and the Isthmus
// gateway reads them.
#[allow(deprecated)]
fn dns_cluster(target: &Target<'_>, connect_timeout: StdDuration) -> Cluster {
    let svc = target.service;
    let kind = if svc.resolution == Resolution::Dns {
        DiscoveryType::StrictDns
    } else {
        DiscoveryType::LogicalDns
    };
    let mut hosts: Vec<(String, u16)> = svc
        .local
        .iter()
        .filter(|i| {
            target
                .subset_labels
                .as_ref()
                .is_none_or(|sel| crate::config::labels_match(sel, &i.labels))
        })
        .map(|i| (i.address.clone(), i.port_for(target.port)))
        .collect();
    if hosts.is_empty() {
        hosts.push((svc.hostname.clone(), target.port.target_port));
    }
    if kind == DiscoveryType::LogicalDns {
        hosts.truncate(1);
    }
    Cluster {
        name: target.name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        connect_timeout: Some(duration(connect_timeout)),
        // Both families; the gateway races them when connecting (RFC 8305).
        dns_lookup_family: cluster::DnsLookupFamily::All as i32,
        respect_dns_ttl: true,
        dns_refresh_rate: Some(duration(DNS_REFRESH_RATE)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: target.name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: hosts
                    .into_iter()
                    .map(|(host, port)| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket_address(&host, port)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                load_balancing_weight: Some(u32v(1)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Maps Istio's load balancer onto Envoy's. gRPC NACKs policies it does
/// not implement, so it gets round robin except for consistent hashing.
fn apply_load_balancer(c: &mut Cluster, lb: Option<&LoadBalancerSettings>, flavor: ProxyFlavor) {
    if let Some(hash) = lb.and_then(|l| l.consistent_hash.as_ref()) {
        if let (Some(maglev), ProxyFlavor::Envoy) = (&hash.maglev, flavor) {
            c.lb_policy = LbPolicy::Maglev as i32;
            c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: maglev.table_size.map(|value| UInt64Value { value }),
            }));
        } else {
            let min = hash
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(hash.minimum_ring_size);
            c.lb_policy = LbPolicy::RingHash as i32;
            c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: min.map(|value| UInt64Value { value }),
                ..Default::default()
            }));
        }
        return;
    }
    let simple = lb.and_then(|l| l.simple);
    c.lb_policy = match (flavor, simple) {
        (ProxyFlavor::Grpc, _) => LbPolicy::RoundRobin,
        (_, Some(SimpleLb::RoundRobin)) => LbPolicy::RoundRobin,
        (_, Some(SimpleLb::Random)) => LbPolicy::Random,
        // Istio's default, and what LEAST_CONN has meant since 1.x.
        _ => LbPolicy::LeastRequest,
    } as i32;
}

fn circuit_breakers(
    pool: Option<&ConnectionPoolSettings>,
    budget: Option<&crate::config::RetryBudget>,
) -> CircuitBreakers {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let limit = |v: Option<i32>| {
        u32v(
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(UNLIMITED),
        )
    };
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: Some(limit(tcp.and_then(|t| t.max_connections))),
            max_pending_requests: Some(limit(http.and_then(|h| h.http1_max_pending_requests))),
            max_requests: Some(limit(http.and_then(|h| h.http2_max_requests))),
            max_retries: Some(limit(http.and_then(|h| h.max_retries))),
            retry_budget: budget.map(|b| ThresholdsRetryBudget {
                budget_percent: b.percent.map(|value| Percent { value }),
                min_retry_concurrency: b.min_retry_concurrency.map(u32v),
                ..Default::default()
            }),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// HTTP towards the upstream in the protocol the client spoke: the inbound
/// cluster of a sniffed port (Istio's USE_DOWNSTREAM_PROTOCOL).
pub fn use_downstream_protocol(c: &mut Cluster) {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(options));
}

fn http_options(
    port: &ServicePort,
    pool: Option<&ConnectionPoolSettings>,
) -> Option<HttpProtocolOptions> {
    let http = pool.and_then(|p| p.http.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let common = CoreHttpOptions {
        idle_timeout: http
            .and_then(|h| h.idle_timeout.as_ref())
            .map(|d| duration(d.as_std())),
        max_connection_duration: tcp
            .and_then(|t| t.max_connection_duration.as_ref())
            .map(|d| duration(d.as_std())),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .map(u32v),
        ..Default::default()
    };
    let h2 = || Http2ProtocolOptions {
        max_concurrent_streams: http
            .and_then(|h| h.max_concurrent_streams)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .map(u32v),
        ..Default::default()
    };
    let upgrade = http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade);
    // A sniffed port's HTTP goes upstream in the protocol the client spoke
    // (Istio's USE_DOWNSTREAM_PROTOCOL for ports without a protocol).
    let protocol = if http.and_then(|h| h.use_client_protocol) == Some(true) || port.sniffed {
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(h2()),
                ..Default::default()
            },
        ))
    } else if port.protocol.is_http2() || (port.protocol.is_http() && upgrade) {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2())),
            },
        ))
    } else if port.protocol.is_http() {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                )),
            },
        ))
    } else {
        None
    };
    let common_set = common != CoreHttpOptions::default();
    if protocol.is_none() && !common_set {
        return None;
    }
    Some(HttpProtocolOptions {
        common_http_protocol_options: common_set.then_some(common),
        upstream_protocol_options: protocol,
        ..Default::default()
    })
}

fn outlier_detection(o: &OutlierDetection) -> EnvoyOutlier {
    let five_xx = o
        .consecutive_5xx_errors
        .or_else(|| o.consecutive_errors.and_then(|v| u32::try_from(v).ok()));
    let enforce = |v: Option<u32>| v.map(|n| u32v(if n > 0 { 100 } else { 0 }));
    let mut out = EnvoyOutlier {
        consecutive_5xx: five_xx.map(u32v),
        enforcing_consecutive_5xx: enforce(five_xx),
        consecutive_gateway_failure: o.consecutive_gateway_errors.map(u32v),
        enforcing_consecutive_gateway_failure: enforce(o.consecutive_gateway_errors),
        interval: o.interval.as_ref().map(|d| duration(d.as_std())),
        base_ejection_time: o.base_ejection_time.as_ref().map(|d| duration(d.as_std())),
        max_ejection_percent: o.max_ejection_percent.map(|p| u32v(p.get())),
        split_external_local_origin_errors: o.split_external_local_origin_errors.unwrap_or(false),
        consecutive_local_origin_failure: o.consecutive_local_origin_failures.map(u32v),
        // Istio has no success-rate settings and turns Envoy's detector off.
        enforcing_success_rate: Some(u32v(0)),
        ..Default::default()
    };
    // Only gateway errors configured: Istio turns the 5xx detector off
    // instead of leaving Envoy's default of 5 in force.
    if five_xx.is_none() && o.consecutive_gateway_errors.is_some() {
        out.enforcing_consecutive_5xx = Some(u32v(0));
    }
    if out.interval.is_none() {
        out.interval = Some(secs(10));
    }
    out
}

/// The TLS a client uses towards `target`: the DestinationRule's mode, else
/// ISTIO_MUTUAL for mesh services (auto mTLS; every mesh workload runs a
/// sidecar and east-west gateways route on the SNI), else plaintext.
/// Proxyless gRPC only gets TLS when a DestinationRule asks for it.
fn upstream_tls(
    ctx: &Context<'_>,
    target: &Target<'_>,
) -> Option<envoy_types::pb::google::protobuf::Any> {
    let svc = target.service;
    let explicit = target
        .policy
        .tls
        .as_ref()
        .and_then(|t| t.mode.map(|m| (m, t)));
    let mode = match explicit {
        Some((mode, _)) => mode,
        None if svc.is_mesh_internal() && ctx.flavor == ProxyFlavor::Envoy => {
            ClientTlsMode::IstioMutual
        }
        None => ClientTlsMode::Disable,
    };
    let sni = super::naming::outbound_sni(target.port.port, &target.subset, &svc.hostname);
    match mode {
        ClientTlsMode::Disable => None,
        ClientTlsMode::IstioMutual => Some(any(istio_mutual_upstream(
            ctx.flavor,
            &sni,
            &peer_identities(ctx, svc),
        ))),
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            let settings = explicit.map(|(_, s)| s)?;
            if ctx.flavor == ProxyFlavor::Grpc {
                tracing::warn!(cluster = %target.name, "proxyless gRPC cannot use DestinationRule tls SIMPLE/MUTUAL; sending the cluster without TLS");
                return None;
            }
            match user_upstream(settings, &svc.hostname) {
                Ok(tls) => Some(any(tls)),
                Err(e) => {
                    tracing::warn!(cluster = %target.name, error = %e, "DestinationRule TLS cannot be applied; the cluster is sent without TLS");
                    None
                }
            }
        }
    }
}

/// The SPIFFE identities behind a service: its endpoints' service accounts
/// in every cluster, plus the ServiceEntry's `subjectAltNames`.
fn peer_identities(ctx: &Context<'_>, svc: &Service) -> Vec<String> {
    let td = &ctx.inputs.local.trust_domain;
    let mut ids: BTreeSet<String> = svc.subject_alt_names.iter().cloned().collect();
    let accounts = svc
        .local
        .iter()
        .chain(svc.remote.iter().flat_map(|r| &r.endpoints))
        .map(|i| i.service_account.as_str())
        .filter(|sa| !sa.is_empty());
    ids.extend(accounts.map(|sa| spiffe_id(td, &svc.namespace, sa)));
    ids.into_iter().collect()
}
