//! Targeted checks on the golden cases, stated as facts rather than whole
//! renderings: what must and must not reach a proxy.

mod translate_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::Inputs;
use isthmus_federation::model::Health;
use isthmus_xds::{Names, TypeUrl};
use prost::Message;

fn case(name: &str) -> translate_support::Loaded {
    translate_support::load(&translate_support::golden_dir().join(name))
}

fn names(l: &translate_support::Loaded, t: TypeUrl) -> BTreeSet<String> {
    translate_support::translate_all(l)[&t]
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

fn assignment(
    inputs: &Inputs,
    l: &translate_support::Loaded,
    cluster: &str,
) -> ClusterLoadAssignment {
    let names = Names::some([cluster.to_string()]);
    let out = generate(
        inputs,
        &l.proxy,
        l.flavor,
        TypeUrl::ClusterLoadAssignment,
        &names,
    );
    assert_eq!(out.len(), 1, "one assignment for {cluster}");
    ClusterLoadAssignment::decode(out[0].body.value.as_slice()).expect("decodes")
}

/// (address, port, weight, priority) of every endpoint.
fn endpoints(cla: &ClusterLoadAssignment) -> Vec<(String, u32, u32, u32)> {
    let mut out = Vec::new();
    for loc in &cla.endpoints {
        for e in &loc.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                continue;
            };
            let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.clone())
            else {
                continue;
            };
            let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                continue;
            };
            out.push((
                sa.address,
                port,
                e.load_balancing_weight
                    .as_ref()
                    .map(|w| w.value)
                    .unwrap_or(0),
                loc.priority,
            ));
        }
    }
    out.sort();
    out
}

fn listener(l: &translate_support::Loaded, name: &str) -> Listener {
    let out = generate(
        &l.inputs,
        &l.proxy,
        l.flavor,
        TypeUrl::Listener,
        &Names::All,
    );
    let r = out
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("listener {name} generated"));
    Listener::decode(r.body.value.as_slice()).expect("decodes")
}

const REVIEWS: &str = "outbound|9080||reviews.shop.svc.cluster.local";

#[test]
fn other_networks_are_reached_through_their_gateway_weighted_by_healthy_endpoints() {
    let l = case("mc-other-network");
    let eps = endpoints(&assignment(&l.inputs, &l, REVIEWS));
    assert!(
        eps.contains(&("192.0.2.10".into(), 15443, 2, 1)),
        "c2's gateway, weight 2: {eps:?}"
    );
    for absent in ["198.51.100.10", "203.0.113.10", "10.1.1.1", "10.2.1.1"] {
        assert!(
            !eps.iter().any(|e| e.0 == absent),
            "{absent} must not be sent: {eps:?}"
        );
    }
    assert!(
        eps.iter().any(|e| e.0 == "10.4.1.1"),
        "same-network endpoints are direct: {eps:?}"
    );
}

#[test]
fn the_local_cluster_comes_from_local_config_not_the_registry() {
    let l = case("mc-same-network");
    let eps = endpoints(&assignment(&l.inputs, &l, REVIEWS));
    assert!(
        !eps.iter().any(|e| e.0 == "10.9.9.9"),
        "registry copy of the local cluster ignored: {eps:?}"
    );
    assert!(
        eps.contains(&("10.0.1.1".into(), 9080, 1, 0)),
        "local endpoint at priority 0: {eps:?}"
    );
    assert!(
        eps.contains(&("10.1.1.1".into(), 9080, 1, 1)),
        "same region at priority 1: {eps:?}"
    );
    assert!(
        eps.contains(&("10.2.1.1".into(), 9080, 1, 2)),
        "rest of the network at priority 2: {eps:?}"
    );
}

fn set_health(services: &mut isthmus_federation::ServiceMap, health: Health) {
    *services = services
        .iter()
        .map(|(k, svc)| {
            let mut svc = svc.clone();
            for e in &mut svc.endpoints {
                e.health = health;
            }
            (k.clone(), svc)
        })
        .collect();
}

#[test]
fn a_lease_expiry_removes_the_cluster_and_a_recovery_brings_it_back() {
    let l = case("mc-other-network");
    let mut registry = (*l.inputs.registry).clone();
    set_health(
        registry.services.get_mut("c2").expect("c2 publishes"),
        Health::Unavailable,
    );
    let expired = Inputs::new(
        l.inputs.config.clone(),
        Arc::new(registry.clone()),
        l.inputs.local.clone(),
    );
    let eps = endpoints(&assignment(&expired, &l, REVIEWS));
    assert!(
        !eps.iter().any(|e| e.0 == "192.0.2.10"),
        "expired cluster gone: {eps:?}"
    );
    set_health(
        registry.services.get_mut("c2").expect("c2 publishes"),
        Health::Healthy,
    );
    let back = Inputs::new(
        l.inputs.config.clone(),
        Arc::new(registry),
        l.inputs.local.clone(),
    );
    let eps = endpoints(&assignment(&back, &l, REVIEWS));
    assert!(
        eps.contains(&("192.0.2.10".into(), 15443, 3, 1)),
        "all three healthy again: {eps:?}"
    );
}

#[test]
fn subsets_select_endpoints_in_every_cluster() {
    let l = case("mc-subsets");
    let v2 = endpoints(&assignment(
        &l.inputs,
        &l,
        "outbound|9080|v2|reviews.shop.svc.cluster.local",
    ));
    assert!(v2.iter().any(|e| e.0 == "10.1.1.2"), "{v2:?}");
    assert!(
        !v2.iter().any(|e| e.0 == "10.1.1.1" || e.0 == "10.0.1.1"),
        "v1 endpoints excluded: {v2:?}"
    );
    assert!(
        v2.iter()
            .filter(|e| e.0.starts_with("192.0.2.5"))
            .all(|e| e.2 == 2),
        "gateway weight 2: {v2:?}"
    );
    let v1 = endpoints(&assignment(
        &l.inputs,
        &l,
        "outbound|9080|v1|reviews.shop.svc.cluster.local",
    ));
    assert!(
        v1.iter()
            .filter(|e| e.0.starts_with("192.0.2.5"))
            .all(|e| e.2 == 1),
        "gateway weight 1: {v1:?}"
    );
}

#[test]
fn eastwest_gateway_passes_through_exported_services_only() {
    let l = case("eastwest-gateway");
    let gw = listener(&l, "0.0.0.0_15443");
    let snis: BTreeSet<String> = gw
        .filter_chains
        .iter()
        .flat_map(|c| {
            c.filter_chain_match
                .iter()
                .flat_map(|m| m.server_names.clone())
        })
        .collect();
    let want: BTreeSet<String> = [
        "outbound_.9080_._.reviews.shop.svc.cluster.local",
        "outbound_.9080_.v1_.reviews.shop.svc.cluster.local",
        "outbound_.9080_.v2_.reviews.shop.svc.cluster.local",
    ]
    .map(String::from)
    .into();
    assert_eq!(snis, want);
    assert_eq!(gw.listener_filters.len(), 1, "tls_inspector");
    assert!(
        gw.filter_chains
            .iter()
            .all(|c| c.transport_socket.is_none()),
        "never terminates TLS"
    );
    let clusters = names(&l, TypeUrl::Cluster);
    assert_eq!(clusters, want, "clusters are the SNI names");
}

#[test]
fn peer_authentication_shapes_inbound_chains() {
    let strict = listener(&case("sidecar-bookinfo"), "inbound_10.0.0.5_9080");
    assert_eq!(strict.filter_chains.len(), 1);
    assert!(
        strict.filter_chains[0].transport_socket.is_some(),
        "STRICT terminates mTLS"
    );
    let permissive = listener(&case("vs-weighted-fault"), "inbound_10.0.0.5_9080");
    let protocols: Vec<String> = permissive
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .map(|m| m.transport_protocol.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        protocols,
        vec!["tls", "raw_buffer"],
        "PERMISSIVE accepts both"
    );
    // DISABLE accepts plaintext, and still terminates mesh mTLS: traffic
    // from other clusters always arrives as mTLS (docs/security.md).
    let disabled = listener(&case("sidecar-scope"), "inbound_10.0.0.5_9080");
    let shape: Vec<(String, bool)> = disabled
        .filter_chains
        .iter()
        .map(|c| {
            let proto = c
                .filter_chain_match
                .as_ref()
                .map(|m| m.transport_protocol.clone())
                .unwrap_or_default();
            (proto, c.transport_socket.is_some())
        })
        .collect();
    assert_eq!(
        shape,
        vec![("tls".to_string(), true), ("raw_buffer".to_string(), false)],
        "port-level DISABLE: plaintext chain plus the mesh mTLS chain"
    );
}

#[test]
fn sidecar_scope_limits_what_a_proxy_sees() {
    let l = case("sidecar-scope");
    let clusters = names(&l, TypeUrl::Cluster);
    assert!(clusters.contains("outbound|443||api.example.com"));
    assert!(clusters.contains(REVIEWS));
    assert!(
        !clusters
            .iter()
            .any(|c| c.contains("payments") || c.contains("internal")),
        "{clusters:?}"
    );
}

#[test]
fn grpc_targets_resolve_only_for_known_ports() {
    let l = case("grpc-proxyless");
    let ask = |name: &str| {
        let names = Names::some([name.to_string()]);
        generate(&l.inputs, &l.proxy, l.flavor, TypeUrl::Listener, &names).len()
    };
    assert_eq!(ask("reviews.shop.svc.cluster.local:9080"), 1);
    assert_eq!(
        ask("reviews:9080"),
        1,
        "short name in the proxy's namespace"
    );
    assert_eq!(ask("reviews.shop.svc.clusterset.local:9080"), 1);
    assert_eq!(ask("reviews.shop.svc.cluster.local:9999"), 0);
    assert_eq!(ask("nothing.shop.svc.cluster.local:9080"), 0);
}

#[test]
fn gateway_virtual_services_merge_per_host_and_redirect_to_https() {
    use envoy_types::pb::envoy::config::route::v3::{
        virtual_host::TlsRequirementType, RouteConfiguration,
    };
    let l = case("ingress-gateway");
    let routes = generate(
        &l.inputs,
        &l.proxy,
        l.flavor,
        TypeUrl::RouteConfiguration,
        &Names::All,
    );
    let get = |name: &str| {
        let r = routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} generated"));
        RouteConfiguration::decode(r.body.value.as_slice()).expect("decodes")
    };
    let http = get("http.8080");
    assert_eq!(
        http.virtual_hosts.len(),
        1,
        "`*` narrowed to the server's host, merged"
    );
    let names: Vec<&str> = http.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        vec!["shop.bookinfo.0", "istio-system.mesh-entry.0"],
        "exact host first"
    );
    assert_eq!(
        http.virtual_hosts[0].require_tls,
        TlsRequirementType::None as i32
    );
    let redirect = get("http.8081");
    assert!(redirect
        .virtual_hosts
        .iter()
        .all(|v| v.require_tls == TlsRequirementType::All as i32));
}

#[test]
fn unnamed_ports_get_protocol_sniffing_named_ones_do_not() {
    let l = case("sidecar-sniffing");
    let sniffed = listener(&l, "outbound_127.0.0.1_7000");
    let filters: Vec<&str> = sniffed
        .listener_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.tls_inspector",
            "envoy.filters.listener.http_inspector"
        ]
    );
    let chains: Vec<(&str, Vec<String>)> = sniffed
        .filter_chains
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.filter_chain_match
                    .as_ref()
                    .map(|m| m.application_protocols.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            (
                "outbound_127.0.0.1_7000_http",
                vec!["http/1.0".into(), "http/1.1".into(), "h2c".into()]
            ),
            ("outbound_127.0.0.1_7000_tcp", vec![]),
        ]
    );
    assert!(names(&l, TypeUrl::RouteConfiguration).contains("7000"));
    for named in ["outbound_127.0.0.1_7001", "outbound_127.0.0.1_7002"] {
        let l = listener(&l, named);
        assert!(l.listener_filters.is_empty(), "{named}");
        assert_eq!(l.filter_chains.len(), 1, "{named}");
    }
}
