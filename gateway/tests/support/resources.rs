//! Builders for the Envoy resources a control plane would send (Istio naming).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
    CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, transport_socket,
    Address, AggregatedConfigSource, ConfigSource, DataSource, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    secret, subject_alt_name_matcher, CertificateValidationContext, CommonTlsContext,
    DownstreamTlsContext, SdsSecretConfig, Secret, SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SDS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

pub fn addr(a: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads()),
    }
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

pub fn named<T: prost::Name + prost::Message>(name: &str, r: T) -> (String, Any) {
    (name.to_string(), pack_any(r))
}

pub fn tcp_proxy_filter(cluster: &str) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: cluster.into(),
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        }))),
    }
}

/// Sidecar outbound: plaintext in, tcp_proxy to `cluster`.
pub fn outbound_listener(name: &str, at: SocketAddr, cluster: &str) -> Listener {
    Listener {
        name: name.into(),
        address: Some(addr(at)),
        filter_chains: vec![FilterChain {
            name: format!("{name}-chain"),
            filters: vec![tcp_proxy_filter(cluster)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// East-west gateway: SNI routes, no TLS termination.
pub fn passthrough_listener(name: &str, at: SocketAddr, routes: &[(&str, &str)]) -> Listener {
    Listener {
        name: name.into(),
        address: Some(addr(at)),
        listener_filters: vec![tls_inspector()],
        filter_chains: routes
            .iter()
            .map(|(sni, cluster)| FilterChain {
                name: (*sni).into(),
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec![(*sni).into()],
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(cluster)],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn mesh_common(sans: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default")],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans
                        .iter()
                        .map(|s| SubjectAltNameMatcher {
                            san_type: subject_alt_name_matcher::SanType::Uri as i32,
                            matcher: Some(exact(s)),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA")),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn tls_socket<T: prost::Name + prost::Message>(ctx: T) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// Sidecar inbound: terminates mTLS (STRICT when `permissive` is false)
/// and forwards to `cluster`; PERMISSIVE adds a plaintext chain.
pub fn inbound_listener(
    name: &str,
    at: SocketAddr,
    cluster: &str,
    client_sans: &[&str],
    permissive: bool,
) -> Listener {
    let mut chains = vec![FilterChain {
        name: "mtls".into(),
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        transport_socket: Some(tls_socket(DownstreamTlsContext {
            common_tls_context: Some(mesh_common(client_sans)),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        })),
        filters: vec![tcp_proxy_filter(cluster)],
        ..Default::default()
    }];
    if permissive {
        chains.push(FilterChain {
            name: "plaintext".into(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "raw_buffer".into(),
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(cluster)],
            ..Default::default()
        });
    }
    Listener {
        name: name.into(),
        address: Some(addr(at)),
        listener_filters: vec![tls_inspector()],
        filter_chains: chains,
        ..Default::default()
    }
}

/// Sidecar inbound terminating mTLS (STRICT) in front of any network filter.
pub fn inbound_listener_with(
    name: &str,
    at: SocketAddr,
    filter: Filter,
    client_sans: &[&str],
) -> Listener {
    Listener {
        name: name.into(),
        address: Some(addr(at)),
        listener_filters: vec![tls_inspector()],
        filter_chains: vec![FilterChain {
            name: "mtls".into(),
            filter_chain_match: Some(FilterChainMatch {
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            transport_socket: Some(tls_socket(DownstreamTlsContext {
                common_tls_context: Some(mesh_common(client_sans)),
                require_client_certificate: Some(BoolValue { value: true }),
                ..Default::default()
            })),
            filters: vec![filter],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Outbound mesh cluster: mTLS origination with the Istio SNI.
pub fn mtls_cluster(name: &str, sni: &str, server_sans: &[&str]) -> Cluster {
    let mut c = eds_cluster(name);
    c.transport_socket = Some(tls_socket(UpstreamTlsContext {
        common_tls_context: Some(mesh_common(server_sans)),
        sni: sni.into(),
        ..Default::default()
    }));
    c
}

pub fn with_outlier(mut c: Cluster, consecutive_local: u32) -> Cluster {
    c.outlier_detection = Some(OutlierDetection {
        consecutive_local_origin_failure: Some(UInt32Value {
            value: consecutive_local,
        }),
        split_external_local_origin_errors: true,
        max_ejection_percent: Some(UInt32Value { value: 100 }),
        base_ejection_time: Some(PbDuration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    });
    c
}

pub fn with_max_connections(mut c: Cluster, n: u32) -> Cluster {
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: Some(UInt32Value { value: n }),
            ..Default::default()
        }],
        ..Default::default()
    });
    c
}

/// A ClusterLoadAssignment; each group is (priority, endpoints).
pub fn cla(name: &str, groups: &[(u32, &[SocketAddr])]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: groups
            .iter()
            .map(|(prio, eps)| LocalityLbEndpoints {
                priority: *prio,
                lb_endpoints: eps
                    .iter()
                    .map(|a| LbEndpoint {
                        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                            address: Some(addr(*a)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

pub fn rootca(pem: &str) -> Secret {
    Secret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                    pem.into(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}
