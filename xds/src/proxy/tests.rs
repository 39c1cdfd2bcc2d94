use super::*;
use envoy_types::pb::envoy::config::core::v3::Locality as PbLocality;

fn s(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    }
}

fn node(id: &str, meta: &[(&str, Value)]) -> Node {
    Node {
        id: id.to_owned(),
        metadata: Some(Struct {
            fields: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }),
        ..Default::default()
    }
}

#[test]
fn parses_istio_sidecar_node() {
    let labels = Value {
        kind: Some(Kind::StructValue(Struct {
            fields: [
                ("app".to_owned(), s("reviews")),
                ("version".to_owned(), s("v1")),
            ]
            .into_iter()
            .collect(),
        })),
    };
    let mut n = node(
        "sidecar~10.1.2.3~reviews-v1-abc.default~default.svc.cluster.local",
        &[
            ("CLUSTER_ID", s("cluster-a")),
            ("NETWORK", s("net-a")),
            ("LABELS", labels),
            ("INTERCEPTION_MODE", s("NONE")),
            ("ISTHMUS_APP_ADDRESS", s("10.1.2.3")),
        ],
    );
    n.locality = Some(PbLocality {
        region: "eu".into(),
        zone: "eu-1".into(),
        sub_zone: String::new(),
    });
    let p = Proxy::from_node(Some(&n)).unwrap();
    assert_eq!(p.node_type, NodeType::Sidecar);
    assert_eq!(p.role, ProxyRole::Sidecar);
    assert_eq!(p.ip, "10.1.2.3".parse::<IpAddr>().unwrap());
    assert_eq!(p.name, "reviews-v1-abc");
    assert_eq!(p.namespace, "default");
    assert_eq!(p.cluster_id.as_deref(), Some("cluster-a"));
    assert_eq!(p.network.as_deref(), Some("net-a"));
    assert_eq!(p.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(p.locality.zone, "eu-1");
    assert_eq!(p.interception_mode.as_deref(), Some("NONE"));
    assert_eq!(p.outbound_bind, LOOPBACK);
    assert_eq!(p.app_address, "10.1.2.3".parse::<IpAddr>().unwrap());
}

#[test]
fn gateway_role_from_metadata_or_labels() {
    let n = node(
        "router~10.0.0.9~ew-1.istio-system~istio-system.svc.cluster.local",
        &[("ISTHMUS_ROLE", s("east-west"))],
    );
    assert_eq!(
        Proxy::from_node(Some(&n)).unwrap().role,
        ProxyRole::EastWest
    );
    let labels = Value {
        kind: Some(Kind::StructValue(Struct {
            fields: [("istio".to_owned(), s("egressgateway"))]
                .into_iter()
                .collect(),
        })),
    };
    let n = node(
        "router~10.0.0.9~eg.istio-system~istio-system.svc.cluster.local",
        &[("LABELS", labels)],
    );
    assert_eq!(Proxy::from_node(Some(&n)).unwrap().role, ProxyRole::Egress);
    let n = node("router~10.0.0.9~gw.ns~ns.svc.cluster.local", &[]);
    assert_eq!(Proxy::from_node(Some(&n)).unwrap().role, ProxyRole::Ingress);
}

#[test]
fn namespace_metadata_wins_and_domain_is_fallback() {
    let n = node(
        "sidecar~10.0.0.1~pod.a~a.svc.cluster.local",
        &[("NAMESPACE", s("b"))],
    );
    assert_eq!(Proxy::from_node(Some(&n)).unwrap().namespace, "b");
    let n = node("sidecar~10.0.0.1~pod~c.svc.cluster.local", &[]);
    let p = Proxy::from_node(Some(&n)).unwrap();
    assert_eq!((p.name.as_str(), p.namespace.as_str()), ("pod", "c"));
}

#[test]
fn refuses_malformed_ids_and_metadata() {
    let cases: Vec<(Node, &str)> = vec![
        (node("just-a-name", &[]), "4 fields"),
        (node("vm~10.0.0.1~p.ns~ns.svc", &[]), "neither"),
        (node("sidecar~not-an-ip~p.ns~ns.svc", &[]), "not an IP"),
        (node("sidecar~10.0.0.1~~ns.svc", &[]), "empty"),
        (node("sidecar~10.0.0.1~.ns~ns.svc", &[]), "empty pod"),
        (
            node(
                "sidecar~10.0.0.1~p.ns~ns.svc",
                &[("ISTHMUS_ROLE", s("ingress"))],
            ),
            "does not match",
        ),
        (
            node(
                "router~10.0.0.1~p.ns~ns.svc",
                &[("ISTHMUS_ROLE", s("mesh"))],
            ),
            "not one of",
        ),
        (
            node(
                "sidecar~10.0.0.1~p.ns~ns.svc",
                &[(
                    "CLUSTER_ID",
                    Value {
                        kind: Some(Kind::NumberValue(3.0)),
                    },
                )],
            ),
            "CLUSTER_ID must be a string",
        ),
        (
            node("sidecar~10.0.0.1~p.ns~ns.svc", &[("LABELS", s("app=x"))]),
            "LABELS must be a struct",
        ),
        (
            node(
                "sidecar~10.0.0.1~p.ns~ns.svc",
                &[("ISTHMUS_OUTBOUND_BIND", s("localhost"))],
            ),
            "ISTHMUS_OUTBOUND_BIND must be an IP",
        ),
    ];
    for (n, want) in cases {
        let err = Proxy::from_node(Some(&n)).unwrap_err().to_string();
        assert!(err.contains(want), "{:?}: {err}", n.id);
    }
    assert_eq!(Proxy::from_node(None), Err(ProxyError::MissingNode));
}

#[test]
fn shape_ignores_pod_name_only() {
    let a = Proxy::from_node(Some(&node("sidecar~10.0.0.1~a.ns~ns.svc", &[]))).unwrap();
    let b = Proxy::from_node(Some(&node("sidecar~10.0.0.1~b.ns~ns.svc", &[]))).unwrap();
    let c = Proxy::from_node(Some(&node("sidecar~10.0.0.2~a.ns~ns.svc", &[]))).unwrap();
    assert_eq!(a.shape_key(), b.shape_key());
    assert_ne!(a.shape_key(), c.shape_key());
}

#[test]
fn shape_except_address_ignores_ip_but_not_workload_shape() {
    let a = Proxy::from_node(Some(&node("sidecar~10.0.0.1~a.ns~ns.svc", &[]))).unwrap();
    let b = Proxy::from_node(Some(&node("sidecar~10.0.0.2~b.ns~ns.svc", &[]))).unwrap();
    let other_ns = Proxy::from_node(Some(&node("sidecar~10.0.0.2~b.x~x.svc", &[]))).unwrap();
    let grpc = Proxy::from_node(Some(&node(
        "sidecar~10.0.0.2~b.ns~ns.svc",
        &[("GENERATOR", s("grpc"))],
    )))
    .unwrap();
    assert_eq!(a.shape_key_except_address(), b.shape_key_except_address());
    assert_ne!(
        a.shape_key_except_address(),
        other_ns.shape_key_except_address()
    );
    assert_ne!(
        b.shape_key_except_address(),
        grpc.shape_key_except_address()
    );
    assert_ne!(b.shape_key(), grpc.shape_key());
    assert_ne!(
        a.shape_key(),
        a.shape_key_except_address(),
        "the two keys never collide by construction"
    );
}

#[test]
fn generator_metadata_is_read() {
    let p = Proxy::from_node(Some(&node(
        "sidecar~10.0.0.1~a.ns~ns.svc",
        &[("GENERATOR", s("grpc"))],
    )))
    .unwrap();
    assert_eq!(p.generator.as_deref(), Some("grpc"));
    let envoy = Proxy::from_node(Some(&node("sidecar~10.0.0.1~a.ns~ns.svc", &[]))).unwrap();
    assert_eq!(envoy.generator, None);
}
