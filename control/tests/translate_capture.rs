//! Sidecars with traffic capture (`INTERCEPTION_MODE: REDIRECT`): Istio's
//! listener shapes (virtualOutbound, unbound per-port listeners,
//! virtualInbound matched by destination port), the passthrough clusters,
//! the outbound traffic policy from the Sidecar resource and MeshConfig,
//! the catch-all virtual host in both modes, and Sidecar `ingress`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, Proxy, TypeUrl};
use prost::Message;

const BASE: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: echo, namespace: foo}
spec:
  hosts: ["echo.foo.svc.cluster.local"]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-echo, protocol: TCP}]
  endpoints: [{address: 10.0.0.9, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: web, namespace: foo}
spec:
  hosts: ["web.foo.svc.cluster.local"]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.8, serviceAccount: web}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: pod, namespace: foo}
spec:
  hosts: ["pod.foo.svc.cluster.local"]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: tcp, protocol: TCP}]
  workloadSelector: {labels: {app: pod}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: pod-1, namespace: foo}
spec: {address: 10.0.0.2, labels: {app: pod}, serviceAccount: pod}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: pod, namespace: foo}
spec:
  selector: {matchLabels: {app: pod}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
"#;

fn config(yaml: &str) -> ConfigSnapshot {
    ConfigSnapshot::from_text(Path::new("capture.yaml"), yaml)
        .unwrap_or_else(|errors| panic!("fixture has errors: {errors:?}"))
}

fn proxy(mode: &str) -> Proxy {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let labels = Struct {
        fields: [("app".to_string(), s("pod"))].into(),
    };
    let node = envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~10.0.0.2~pod-1.foo~foo.svc.cluster.local".into(),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s("foo")),
                ("INTERCEPTION_MODE".to_string(), s(mode)),
                ("ISTHMUS_ROLE".to_string(), s("sidecar")),
                (
                    "LABELS".to_string(),
                    Value {
                        kind: Some(Kind::StructValue(labels)),
                    },
                ),
            ]
            .into(),
        }),
        ..Default::default()
    };
    Proxy::from_node(Some(&node)).expect("node")
}

struct Out {
    listeners: BTreeMap<String, Listener>,
    clusters: BTreeMap<String, Cluster>,
    routes: BTreeMap<String, RouteConfiguration>,
}

fn translate(yaml: &str, mode: &str) -> Out {
    let inputs = Inputs::new(
        Arc::new(config(yaml)),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    let p = proxy(mode);
    let gen = |t| generate(&inputs, &p, ProxyFlavor::Envoy, t, &Names::All);
    Out {
        listeners: gen(TypeUrl::Listener)
            .into_iter()
            .map(|r| {
                (
                    r.name,
                    Listener::decode(r.body.value.as_slice()).expect("lds"),
                )
            })
            .collect(),
        clusters: gen(TypeUrl::Cluster)
            .into_iter()
            .map(|r| {
                (
                    r.name,
                    Cluster::decode(r.body.value.as_slice()).expect("cds"),
                )
            })
            .collect(),
        routes: gen(TypeUrl::RouteConfiguration)
            .into_iter()
            .map(|r| {
                (
                    r.name,
                    RouteConfiguration::decode(r.body.value.as_slice()).expect("rds"),
                )
            })
            .collect(),
    }
}

fn address_of(l: &Listener) -> (String, u32) {
    let Some(address::Address::SocketAddress(sa)) =
        l.address.as_ref().and_then(|a| a.address.clone())
    else {
        panic!("{} has no socket address", l.name);
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        panic!("{} has no port", l.name);
    };
    (sa.address, port)
}

fn tcp_cluster_of(l: &Listener) -> String {
    let chain = l
        .filter_chains
        .first()
        .or(l.default_filter_chain.as_ref())
        .expect("a chain");
    let f = chain.filters.last().expect("a filter");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("typed config");
    };
    let tp = TcpProxy::decode(any.value.as_slice()).expect("tcp_proxy");
    match tp.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => c,
        other => panic!("unexpected {other:?}"),
    }
}

fn discovery(c: &Cluster) -> i32 {
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => t,
        _ => panic!("{} has no type", c.name),
    }
}

#[test]
fn redirect_mode_listener_shapes() {
    let out = translate(BASE, "REDIRECT");
    let names: Vec<&str> = out.listeners.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "outbound_0.0.0.0_7000",
            "outbound_0.0.0.0_8080",
            // The pod's own service is reachable from it too.
            "outbound_0.0.0.0_9080",
            "outbound_0.0.0.0_9090",
            "virtualInbound",
            "virtualOutbound"
        ],
        "no bound per-service listeners with capture"
    );

    let vo = &out.listeners["virtualOutbound"];
    assert_eq!(address_of(vo), ("0.0.0.0".into(), 15001));
    assert_eq!(vo.use_original_dst.as_ref().map(|b| b.value), Some(true));
    assert!(vo
        .listener_filters
        .iter()
        .any(|f| f.name == "envoy.filters.listener.original_dst"));
    assert_eq!(
        tcp_cluster_of(vo),
        "PassthroughCluster",
        "ALLOW_ANY by default"
    );

    for (name, port) in [
        ("outbound_0.0.0.0_7000", 7000),
        ("outbound_0.0.0.0_8080", 8080),
    ] {
        let l = &out.listeners[name];
        assert_eq!(address_of(l), ("0.0.0.0".into(), port));
        assert_eq!(
            l.bind_to_port.as_ref().map(|b| b.value),
            Some(false),
            "{name}"
        );
    }
    assert_eq!(
        tcp_cluster_of(&out.listeners["outbound_0.0.0.0_7000"]),
        "outbound|7000||echo.foo.svc.cluster.local"
    );

    let vi = &out.listeners["virtualInbound"];
    assert_eq!(address_of(vi), ("0.0.0.0".into(), 15006));
    assert!(vi.use_original_dst.as_ref().is_none_or(|b| !b.value));
    let filters: Vec<&str> = vi
        .listener_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
    // (destination port, transport protocol, terminates TLS) per chain.
    let mut chains: Vec<(Option<u32>, String, bool)> = vi
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                m.destination_port.map(|p| p.value),
                m.transport_protocol,
                c.transport_socket.is_some(),
            )
        })
        .collect();
    chains.sort();
    assert_eq!(
        chains,
        [
            // Undeclared ports: workload-level mode (STRICT) → mTLS only.
            (None, String::new(), true),
            // 9080 STRICT: one chain, mTLS.
            (Some(9080), String::new(), true),
            // 9090 PERMISSIVE: detected per connection.
            (Some(9090), "raw_buffer".into(), false),
            (Some(9090), "tls".into(), true),
        ]
    );

    let pt = &out.clusters["PassthroughCluster"];
    assert_eq!(discovery(pt), 4, "ORIGINAL_DST");
    assert_eq!(pt.lb_policy, 6, "CLUSTER_PROVIDED");
    assert_eq!(discovery(&out.clusters["InboundPassthroughClusterIpv4"]), 4);
    let bh = &out.clusters["BlackHoleCluster"];
    assert_eq!(discovery(bh), 0, "STATIC");
    assert!(bh
        .load_assignment
        .as_ref()
        .is_some_and(|la| la.endpoints.is_empty()));
    assert!(out.clusters.contains_key("inbound|9080||"));
}

fn catch_all(rc: &RouteConfiguration) -> Option<(String, Option<route::Action>)> {
    rc.virtual_hosts
        .iter()
        .find(|v| v.domains == ["*"])
        .map(|v| {
            (
                v.name.clone(),
                v.routes.first().and_then(|r| r.action.clone()),
            )
        })
}

#[test]
fn allow_any_catch_all_in_both_modes() {
    for mode in ["REDIRECT", "NONE"] {
        let out = translate(BASE, mode);
        let rc = out.routes.get("8080").expect("route config 8080");
        let (name, action) = catch_all(rc).expect("catch-all virtual host");
        assert_eq!(name, "allow_any", "{mode}");
        let Some(route::Action::Route(ra)) = action else {
            panic!("allow_any routes")
        };
        assert_eq!(
            ra.cluster_specifier,
            Some(
                envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
                    "PassthroughCluster".into()
                )
            )
        );
        assert!(out.clusters.contains_key("PassthroughCluster"), "{mode}");
        assert!(out.clusters.contains_key("BlackHoleCluster"), "{mode}");
    }
    // Without capture, nothing is passed through at the TCP level.
    let none = translate(BASE, "NONE");
    assert!(!none.listeners.contains_key("virtualOutbound"));
    assert!(!none.clusters.contains_key("InboundPassthroughClusterIpv4"));
}

#[test]
fn registry_only_from_sidecar_then_mesh_config() {
    let sidecar = format!(
        "{BASE}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: foo}}\nspec:\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
    );
    let mesh = format!(
        "{BASE}\n---\napiVersion: isthmus.io/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  clusterId: a\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
    );
    let sidecar_allows = format!(
        "{mesh}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: foo}}\nspec:\n  outboundTrafficPolicy: {{mode: ALLOW_ANY}}\n"
    );
    for (what, yaml, blocked) in [
        ("Sidecar REGISTRY_ONLY", sidecar.as_str(), true),
        ("MeshConfig REGISTRY_ONLY", mesh.as_str(), true),
        (
            "Sidecar ALLOW_ANY over MeshConfig",
            sidecar_allows.as_str(),
            false,
        ),
    ] {
        let out = translate(yaml, "REDIRECT");
        let want = if blocked {
            "BlackHoleCluster"
        } else {
            "PassthroughCluster"
        };
        assert_eq!(
            tcp_cluster_of(&out.listeners["virtualOutbound"]),
            want,
            "{what}"
        );
        let (name, action) = catch_all(&out.routes["8080"]).expect("catch-all");
        if blocked {
            assert_eq!(name, "block_all", "{what}");
            let Some(route::Action::DirectResponse(d)) = action else {
                panic!("{what}: block_all answers directly")
            };
            assert_eq!(d.status, 502);
        } else {
            assert_eq!(name, "allow_any", "{what}");
        }
    }
}

#[test]
fn sidecar_ingress_replaces_inbound_ports() {
    let yaml = format!(
        "{BASE}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: foo}}\nspec:\n  workloadSelector: {{labels: {{app: pod}}}}\n  ingress:\n  - port: {{number: 9443, protocol: TCP, name: tcp-admin}}\n    defaultEndpoint: 127.0.0.1:8443\n"
    );
    let out = translate(&yaml, "REDIRECT");
    let ports: Vec<Option<u32>> = out.listeners["virtualInbound"]
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port.map(|p| p.value))
        })
        .filter(Option::is_some)
        .collect();
    assert_eq!(ports, [Some(9443)], "only the Sidecar's ingress port");
    let c = &out.clusters["inbound|9443||"];
    let ep = &c.load_assignment.as_ref().expect("static").endpoints[0].lb_endpoints[0];
    let Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
        e,
    )) = &ep.host_identifier
    else {
        panic!("endpoint")
    };
    let Some(address::Address::SocketAddress(sa)) =
        e.address.as_ref().and_then(|a| a.address.clone())
    else {
        panic!("socket address")
    };
    assert_eq!(sa.address, "127.0.0.1");
    assert_eq!(
        sa.port_specifier,
        Some(socket_address::PortSpecifier::PortValue(8443)),
        "defaultEndpoint's port"
    );
    assert!(!out.clusters.contains_key("inbound|9080||"));
}
