//! Properties every translation must have, checked on every golden case:
//! the ones Envoy and gRPC's xDS client NACK or silently misbehave on.

mod translate_support;

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::ClusterDiscoveryType, cluster::DiscoveryType, cluster::LbPolicy, Cluster,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::google::protobuf::Any;
use isthmus_control::translate::ProxyFlavor;
use isthmus_xds::{Resource, TypeUrl};
use prost::{Message, Name};

fn decode<T: Message + Name + Default>(any: &Any) -> T {
    assert_eq!(any.type_url, T::type_url(), "unexpected type");
    T::decode(any.value.as_slice()).expect("resource decodes")
}

fn all<T: Message + Name + Default>(rs: &[Resource]) -> Vec<T> {
    rs.iter().map(|r| decode(&r.body)).collect()
}

struct Decoded {
    case: String,
    flavor: ProxyFlavor,
    clusters: Vec<Cluster>,
    endpoints: Vec<ClusterLoadAssignment>,
    listeners: Vec<Listener>,
    routes: Vec<RouteConfiguration>,
}

fn cases() -> Vec<Decoded> {
    translate_support::case_dirs()
        .into_iter()
        .map(|dir| {
            let loaded = translate_support::load(&dir);
            let out = translate_support::translate_all(&loaded);
            Decoded {
                case: dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                flavor: loaded.flavor,
                clusters: all(&out[&TypeUrl::Cluster]),
                endpoints: all(&out[&TypeUrl::ClusterLoadAssignment]),
                listeners: all(&out[&TypeUrl::Listener]),
                routes: all(&out[&TypeUrl::RouteConfiguration]),
            }
        })
        .collect()
}

fn is_eds(c: &Cluster) -> bool {
    c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
}

/// Every connection manager of a listener, from filter chains and the API
/// listener.
fn connection_managers(l: &Listener) -> Vec<HttpConnectionManager> {
    let mut out: Vec<HttpConnectionManager> = l
        .filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any))
                if any.type_url == HttpConnectionManager::type_url() =>
            {
                Some(decode(any))
            }
            _ => None,
        })
        .collect();
    if let Some(api) = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
    {
        out.push(decode(api));
    }
    out
}

fn tcp_proxies(l: &Listener) -> Vec<TcpProxy> {
    l.filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) if any.type_url == TcpProxy::type_url() => {
                Some(decode(any))
            }
            _ => None,
        })
        .collect()
}

fn route_clusters(rc: &RouteConfiguration) -> Vec<String> {
    let mut out = Vec::new();
    for vh in &rc.virtual_hosts {
        for r in &vh.routes {
            if let Some(route::Action::Route(a)) = &r.action {
                match &a.cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => out.push(c.clone()),
                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                        out.extend(w.clusters.iter().map(|c| c.name.clone()))
                    }
                    _ => {}
                }
                out.extend(a.request_mirror_policies.iter().map(|m| m.cluster.clone()));
            }
        }
    }
    out
}

#[test]
fn every_locality_is_weighted_and_priorities_are_contiguous() {
    for d in cases() {
        for cla in &d.endpoints {
            let mut priorities = BTreeSet::new();
            for l in &cla.endpoints {
                let w = l
                    .load_balancing_weight
                    .as_ref()
                    .map(|w| w.value)
                    .unwrap_or(0);
                assert!(
                    w > 0,
                    "{}: {} has a locality without load_balancing_weight",
                    d.case,
                    cla.cluster_name
                );
                assert!(
                    l.locality.is_some(),
                    "{}: {} has a locality without locality",
                    d.case,
                    cla.cluster_name
                );
                assert!(
                    !l.lb_endpoints.is_empty(),
                    "{}: {} has an empty locality",
                    d.case,
                    cla.cluster_name
                );
                priorities.insert(l.priority);
            }
            let expected: BTreeSet<u32> =
                (0..u32::try_from(priorities.len()).expect("few priorities")).collect();
            assert_eq!(
                priorities, expected,
                "{}: {} priorities have gaps",
                d.case, cla.cluster_name
            );
        }
    }
}

#[test]
fn eds_clusters_use_ads_and_have_assignments() {
    for d in cases() {
        let assigned: BTreeSet<&str> = d
            .endpoints
            .iter()
            .map(|c| c.cluster_name.as_str())
            .collect();
        for c in d.clusters.iter().filter(|c| is_eds(c)) {
            let eds = c
                .eds_cluster_config
                .as_ref()
                .expect("EDS cluster has eds_cluster_config");
            assert_eq!(
                eds.service_name, c.name,
                "{}: service_name must be set (gRPC)",
                d.case
            );
            assert!(
                eds.eds_config.is_some(),
                "{}: {} has no eds_config",
                d.case,
                c.name
            );
            assert!(
                assigned.contains(c.name.as_str()),
                "{}: EDS cluster {} has no assignment",
                d.case,
                c.name
            );
        }
    }
}

#[test]
fn connection_managers_end_with_the_router_and_routes_exist() {
    for d in cases() {
        let route_names: BTreeSet<&str> = d.routes.iter().map(|r| r.name.as_str()).collect();
        for l in &d.listeners {
            for hcm in connection_managers(l) {
                let last = hcm.http_filters.last().map(|f| f.name.as_str());
                assert_eq!(
                    last,
                    Some("envoy.filters.http.router"),
                    "{}: {} router not last",
                    d.case,
                    l.name
                );
                if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                    assert!(
                        rds.config_source.is_some(),
                        "{}: RDS without config source",
                        d.case
                    );
                    assert!(
                        route_names.contains(rds.route_config_name.as_str()),
                        "{}: listener {} names route {} which is not generated",
                        d.case,
                        l.name,
                        rds.route_config_name
                    );
                }
            }
        }
    }
}

#[test]
fn every_referenced_cluster_exists() {
    for d in cases() {
        let clusters: BTreeSet<&str> = d.clusters.iter().map(|c| c.name.as_str()).collect();
        let mut referenced: Vec<String> = d.routes.iter().flat_map(route_clusters).collect();
        for l in &d.listeners {
            for tp in tcp_proxies(l) {
                if let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = tp.cluster_specifier {
                    referenced.push(c);
                }
            }
            for hcm in connection_managers(l) {
                if let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier {
                    referenced.extend(route_clusters(rc));
                }
            }
        }
        for r in referenced {
            assert!(
                clusters.contains(r.as_str()),
                "{}: {} is routed to but not generated",
                d.case,
                r
            );
        }
    }
}

#[test]
fn domains_are_unique_per_route_configuration() {
    for d in cases() {
        for rc in &d.routes {
            let mut seen = BTreeSet::new();
            for domain in rc.virtual_hosts.iter().flat_map(|v| &v.domains) {
                assert!(
                    seen.insert(domain.clone()),
                    "{}: {} repeats domain {}",
                    d.case,
                    rc.name,
                    domain
                );
            }
        }
    }
}

#[test]
fn filter_chain_matches_are_unique_per_listener() {
    for d in cases() {
        for l in &d.listeners {
            let mut seen = BTreeSet::new();
            for c in &l.filter_chains {
                assert!(
                    seen.insert(format!("{:?}", c.filter_chain_match)),
                    "{}: {} has two chains with the same match",
                    d.case,
                    l.name
                );
            }
            if l.api_listener.is_none() {
                assert!(
                    !l.filter_chains.is_empty(),
                    "{}: {} has no filter chains",
                    d.case,
                    l.name
                );
            }
        }
    }
}

#[test]
fn grpc_output_stays_within_what_grpc_accepts() {
    let grpc: Vec<Decoded> = cases()
        .into_iter()
        .filter(|d| d.flavor == ProxyFlavor::Grpc)
        .collect();
    assert!(!grpc.is_empty(), "a golden case exercises proxyless gRPC");
    for d in grpc {
        for l in &d.listeners {
            assert!(
                l.api_listener.is_some(),
                "{}: {} is not an api_listener",
                d.case,
                l.name
            );
        }
        for c in &d.clusters {
            let logical_dns = c.cluster_discovery_type
                == Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32));
            assert!(
                is_eds(c) || logical_dns,
                "{}: {} has a type gRPC rejects",
                d.case,
                c.name
            );
            let lb = c.lb_policy;
            assert!(
                lb == LbPolicy::RoundRobin as i32 || lb == LbPolicy::RingHash as i32,
                "{}: {} has an LB policy gRPC rejects",
                d.case,
                c.name
            );
            if let Some(ts) = &c.transport_socket {
                let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
                    &ts.config_type
                else {
                    panic!("{}: transport socket without config", d.case);
                };
                let tls: UpstreamTlsContext = decode(any);
                let common = tls.common_tls_context.expect("common TLS context");
                assert!(
                    common.tls_certificate_sds_secret_configs.is_empty(),
                    "{}: SDS in a gRPC cluster",
                    d.case
                );
                assert!(
                    common.tls_certificate_provider_instance.is_some(),
                    "{}: no provider instance",
                    d.case
                );
            }
        }
    }
}
