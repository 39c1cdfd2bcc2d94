//! Conversion tests: what is accepted, and that rejections name resource,
//! field and reason.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, transport_socket, Address, SocketAddress,
    TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    cluster_load_assignment::Policy, lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint,
    LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::{weighted_cluster::ClusterWeight, ClusterSpecifier, WeightedCluster},
    TcpProxy,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, CommonTlsContext, SdsSecretConfig, Secret,
    TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::*;

fn sock(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn tcp_filter(tp: TcpProxy) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(tp))),
    }
}

fn listener(chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: "l".into(),
        address: Some(sock("127.0.0.1", 15001)),
        filter_chains: chains,
        ..Default::default()
    }
}

fn chain_to(cluster: &str) -> FilterChain {
    FilterChain {
        filters: vec![tcp_filter(TcpProxy {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })],
        ..Default::default()
    }
}

#[test]
fn listener_with_tcp_proxy_converts() {
    let l = listener_from_proto(&listener(vec![chain_to("c")])).expect("valid");
    assert_eq!(l.address.to_string(), "127.0.0.1:15001");
    assert_eq!(
        l.filter_chains[0].filter,
        NetworkFilter::TcpProxy(TcpProxyConfig {
            stat_prefix: String::new(),
            route: TcpRoute::Cluster("c".into()),
            idle_timeout: Some(std::time::Duration::from_secs(3600)),
            max_connect_attempts: None,
            access_log: Vec::new(),
        })
    );
}

#[test]
fn weighted_clusters_convert() {
    let l = listener(vec![FilterChain {
        filters: vec![tcp_filter(TcpProxy {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![
                    ClusterWeight {
                        name: "a".into(),
                        weight: 1,
                        ..Default::default()
                    },
                    ClusterWeight {
                        name: "b".into(),
                        weight: 3,
                        ..Default::default()
                    },
                ],
            })),
            ..Default::default()
        })],
        ..Default::default()
    }]);
    let c = listener_from_proto(&l).expect("valid");
    let NetworkFilter::TcpProxy(tp) = &c.filter_chains[0].filter else {
        panic!("expected tcp_proxy");
    };
    assert_eq!(
        tp.route,
        TcpRoute::Weighted(vec![("a".into(), 1), ("b".into(), 3)])
    );
}

#[test]
fn listener_errors_name_field() {
    let cases: Vec<(Listener, &str, &str)> = vec![
        (
            Listener {
                address: None,
                ..listener(vec![chain_to("c")])
            },
            "address",
            "required",
        ),
        (
            Listener {
                address: Some(sock("reviews.local", 80)),
                ..listener(vec![chain_to("c")])
            },
            "address.socket_address.address",
            "not an IP address",
        ),
        (listener(vec![]), "filter_chains", "at least one"),
        (
            listener(vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.redis_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(UInt32Value {
                        value: 1,
                    }))),
                }],
                ..Default::default()
            }]),
            "filter_chains[0].filters[0]",
            "not supported",
        ),
        (
            listener(vec![FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    server_names: vec!["a.example".into()],
                    ..Default::default()
                }),
                ..chain_to("c")
            }]),
            "listener_filters",
            "tls_inspector",
        ),
        (
            listener(vec![FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    transport_protocol: "quic".into(),
                    ..Default::default()
                }),
                ..chain_to("c")
            }]),
            "filter_chains[0].filter_chain_match.transport_protocol",
            "raw_buffer",
        ),
        (
            listener(vec![chain_to("a"), chain_to("b")]),
            "filter_chains[1].filter_chain_match",
            "identical",
        ),
    ];
    for (l, field, reason) in cases {
        let e = listener_from_proto(&l).expect_err(field);
        assert_eq!(e.kind, "Listener");
        assert_eq!(e.name, "l");
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    }
}

fn lb_ep(ip: &str, port: u32, health: i32) -> LbEndpoint {
    LbEndpoint {
        health_status: health,
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(sock(ip, port)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn load_assignment_converts_priorities_and_policy() {
    let cla = ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![
            LocalityLbEndpoints {
                priority: 0,
                load_balancing_weight: Some(UInt32Value { value: 3 }),
                lb_endpoints: vec![lb_ep("10.0.0.1", 80, 1), lb_ep("10.0.0.2", 80, 2)],
                ..Default::default()
            },
            LocalityLbEndpoints {
                priority: 1,
                lb_endpoints: vec![lb_ep("10.0.1.1", 15443, 0)],
                ..Default::default()
            },
        ],
        policy: Some(Policy {
            overprovisioning_factor: Some(UInt32Value { value: 200 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let la = load_assignment_from_proto(&cla).expect("valid");
    assert_eq!(la.overprovisioning_factor, 200);
    assert_eq!(la.localities[0].weight, Some(3));
    assert_eq!(la.localities[0].endpoints[1].health, Health::Unhealthy);
    assert_eq!(la.localities[1].endpoints[0].health, Health::Healthy);
}

#[test]
fn load_assignment_rejects_gaps_in_priorities() {
    let cla = ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![LocalityLbEndpoints {
            priority: 2,
            lb_endpoints: vec![lb_ep("10.0.0.1", 80, 0)],
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = load_assignment_from_proto(&cla).expect_err("gap");
    assert!(
        e.to_string()
            .starts_with("ClusterLoadAssignment \"c\": endpoints: priorities must be contiguous"),
        "{e}"
    );
}

fn tls_socket(ctx: UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

#[test]
fn cluster_with_mesh_tls_converts() {
    let c = Cluster {
        name: "outbound|9080||reviews".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        transport_socket: Some(tls_socket(UpstreamTlsContext {
            sni: "outbound_.9080_._.reviews".into(),
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                    name: "default".into(),
                    sds_config: None,
                }],
                validation_context_type: Some(
                    ValidationContextType::ValidationContextSdsSecretConfig(SdsSecretConfig {
                        name: "ROOTCA".into(),
                        sds_config: None,
                    }),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let cc = cluster_from_proto(&c).expect("valid");
    assert_eq!(cc.eds_name(), Some("outbound|9080||reviews"));
    assert_eq!(cc.lb_policy, LbPolicy::LeastRequest);
    let tls = cc.tls.expect("tls");
    assert_eq!(tls.sni.as_deref(), Some("outbound_.9080_._.reviews"));
    assert_eq!(tls.cert_secret.as_deref(), Some("default"));
    assert_eq!(tls.validation.secret.as_deref(), Some("ROOTCA"));
}

#[test]
fn cluster_errors_name_field() {
    let base = Cluster {
        name: "c".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        ..Default::default()
    };
    let cases: Vec<(Cluster, &str, &str)> = vec![
        (
            Cluster {
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32)),
                ..base.clone()
            },
            "load_assignment",
            "needs load_assignment with hostnames",
        ),
        (
            Cluster {
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
                ..base.clone()
            },
            "load_assignment",
            "STATIC",
        ),
        (Cluster { lb_policy: 6, ..base.clone() }, "lb_policy", "CLUSTER_PROVIDED"),
        (
            Cluster {
                transport_socket: Some(tls_socket(UpstreamTlsContext {
                    sni: "x".into(),
                    common_tls_context: Some(CommonTlsContext {
                        tls_certificate_sds_secret_configs: vec![SdsSecretConfig { name: "mine".into(), sds_config: None }],
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..base.clone()
            },
            "transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name",
            "default",
        ),
        (
            Cluster {
                transport_socket: Some(tls_socket(UpstreamTlsContext { sni: "x".into(), ..Default::default() })),
                ..base.clone()
            },
            "transport_socket.typed_config.common_tls_context",
            "validate the peer",
        ),
    ];
    for (c, field, reason) in cases {
        let e = cluster_from_proto(&c).expect_err(field);
        assert_eq!(
            (e.kind, e.name.as_str(), e.field.as_str()),
            ("Cluster", "c", field),
            "{e}"
        );
        assert!(e.reason.contains(reason), "{e}");
    }
}

#[test]
fn secrets_accept_bundles_and_refuse_keys() {
    let key_secret = Secret {
        name: "mine".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate::default())),
    };
    // Credentials for TLS servers (credentialName) are served; an empty one
    // is refused naming the missing field.
    let e = secret_from_proto(&key_secret).expect_err("empty credential refused");
    assert_eq!(e.field, "tls_certificate.certificate_chain", "{e}");
    let default = Secret {
        name: "default".into(),
        ..key_secret
    };
    assert!(secret_from_proto(&default).is_err());
}
