use super::*;
use serde_json::json;

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_service_becomes_a_mesh_internal_static_service_entry() {
    let svc = service(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "shop", "labels": {"app": "reviews"}},
        "spec": {
            "clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"],
            "selector": {"app": "reviews"},
            "ports": [
                {"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"},
                {"name": "grpc-api", "port": 9090, "targetPort": "api", "appProtocol": "grpc"}
            ]
        }
    }));
    let se = service_entry(&svc, &[]).unwrap();
    assert_eq!(se.spec.hosts, vec!["reviews.shop.svc.cluster.local"]);
    assert_eq!(se.spec.addresses, vec!["10.96.0.12"]);
    assert_eq!(se.spec.location(), MeshLocation::MeshInternal);
    assert_eq!(se.spec.resolution(), Resolution::Static);
    assert_eq!(
        se.spec
            .workload_selector
            .as_ref()
            .unwrap()
            .labels
            .get("app")
            .map(String::as_str),
        Some("reviews")
    );
    assert_eq!(se.spec.ports[0].target_port, Some(9080));
    assert_eq!(
        se.spec.ports[1].target_port, None,
        "named target ports resolve per pod"
    );
    assert_eq!(se.spec.ports[1].protocol.as_deref(), Some("GRPC"));
    // It passes the same validation as a file.
    assert!(validate::validate(&Resource::ServiceEntry(se)).is_empty());
}

#[test]
fn external_name_and_portless_services_are_skipped() {
    let ext = service(json!({"metadata": {"name": "db", "namespace": "a"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"}}));
    assert_eq!(service_entry(&ext, &[]).unwrap_err(), Skip::ExternalName);
    let none = service(
        json!({"metadata": {"name": "x", "namespace": "a"}, "spec": {"clusterIP": "None"}}),
    );
    assert_eq!(service_entry(&none, &[]).unwrap_err(), Skip::NoPorts);
}

#[test]
fn only_ready_endpoints_count_and_locality_comes_from_the_node() {
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "reviews-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.1.0.5"], "conditions": {"ready": true}, "zone": "eu-west-1a",
             "targetRef": {"kind": "Pod", "name": "reviews-v1-x", "namespace": "shop"}},
            {"addresses": ["10.1.0.6"], "conditions": {"ready": false},
             "targetRef": {"kind": "Pod", "name": "reviews-v1-y", "namespace": "shop"}},
            {"addresses": ["192.168.9.9"]}
        ]
    }))
    .unwrap();
    let eps = slice_endpoints(&slice);
    assert_eq!(eps.by_pod.keys().collect::<Vec<_>>(), vec!["reviews-v1-x"]);
    assert_eq!(
        eps.inline.len(),
        1,
        "an endpoint without a Pod is carried inline"
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "reviews-v1-x", "namespace": "shop", "labels": {"app": "reviews", "version": "v1"}},
        "spec": {"serviceAccountName": "bookinfo-reviews", "nodeName": "n1", "containers": []}
    }))
    .unwrap();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/region": "eu-west-1",
                                              "topology.kubernetes.io/zone": "eu-west-1a"}}
    }))
    .unwrap();
    let ep = &eps.by_pod["reviews-v1-x"];
    let we = workload_entry(&pod, &[(None, ep)], Some(&node)).unwrap();
    assert_eq!(we.spec.address.as_deref(), Some("10.1.0.5"));
    assert_eq!(we.spec.ports.get("http"), Some(&9080));
    assert_eq!(we.spec.service_account.as_deref(), Some("bookinfo-reviews"));
    assert_eq!(we.spec.locality.as_deref(), Some("eu-west-1/eu-west-1a"));
    assert_eq!(
        we.spec.labels.get("version").map(String::as_str),
        Some("v1")
    );
    // Without the Node, the slice's zone hint is all there is.
    let we = workload_entry(&pod, &[(None, ep)], None).unwrap();
    assert_eq!(we.spec.locality.as_deref(), Some("/eu-west-1a"));
}

#[test]
fn custom_resources_go_through_the_model_and_its_validation() {
    let good: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "7",
                     "managedFields": [], "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
        "status": {"observedGeneration": 1}
    }))
    .unwrap();
    let r = custom_resource(
        &good,
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
    )
    .unwrap();
    assert_eq!(r.key().to_string(), "VirtualService shop/reviews");
    assert!(r.metadata().annotations.is_empty());
    assert_eq!(r.metadata().resource_version, None);

    let typo: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "bad", "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "htpp": []}
    }))
    .unwrap();
    let diags = custom_resource(
        &typo,
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
    )
    .unwrap_err();
    assert_eq!(diags[0].code, Code::UnknownField);
    assert!(diags[0].message.contains("htpp"), "{}", diags[0].message);
    assert_eq!(
        diags[0].location.to_string(),
        "kube://virtualservices/shop/bad:1:1"
    );

    let weights: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "w", "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews", "subset": "v1"}, "weight": 30},
            {"destination": {"host": "reviews", "subset": "v2"}, "weight": 30}]}]}
    }))
    .unwrap();
    let diags = custom_resource(
        &weights,
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
    )
    .unwrap_err();
    assert_eq!(diags[0].code, Code::WeightsNotHundred);
}
