//! What the store holds: the cluster translated into the model (Services,
//! ready Pods, Istio and MCS resources), the file layer merged on top, and
//! the TLS Secrets of Gateway namespaces.

use isthmus_control::analyze::Code;
use isthmus_control::config::{Kind, Resource};
use isthmus_control::source::kube::KubeSource;
use isthmus_control::store::ConfigStore;
use serde_json::{json, Value};

use crate::fake_apiserver::{eventually, FakeApiServer};
use crate::{config, fixtures, keys, lists_of, start, watches_of, workload, WAIT};

#[tokio::test]
async fn the_first_snapshot_holds_the_cluster_as_the_model() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    let store = start(&server).await;
    let snap = store.current();

    let reviews = snap
        .get_by(Kind::ServiceEntry, "shop", "reviews")
        .expect("Service → ServiceEntry");
    let Resource::ServiceEntry(se) = reviews.resource.as_ref() else {
        panic!()
    };
    assert_eq!(se.spec.hosts, vec!["reviews.shop.svc.cluster.local"]);
    assert_eq!(se.spec.addresses, vec!["10.96.14.10"]);
    assert_eq!(
        reviews.location.to_string(),
        "kube://services/shop/reviews:1:1"
    );

    // Ready Pods behind EndpointSlices are the instances, with their Node's locality.
    let v1 = workload(&snap, "reviews-v1-7c9d8f-x4k2p").expect("ready pod → WorkloadEntry");
    assert_eq!(v1.address.as_deref(), Some("10.244.1.15"));
    assert_eq!(v1.service_account.as_deref(), Some("bookinfo-reviews"));
    assert_eq!(v1.locality.as_deref(), Some("eu-west-1/eu-west-1a"));
    assert_eq!(v1.ports.get("http"), Some(&9080));
    assert_eq!(v1.labels.get("version").map(String::as_str), Some("v1"));
    let v2 = workload(&snap, "reviews-v2-5b8c7d-m9q1z").unwrap();
    assert_eq!(v2.locality.as_deref(), Some("eu-west-1/eu-west-1b"));
    // The single unnamed port is named by its number, as the ServiceEntry names it.
    let ratings = workload(&snap, "ratings-v1-6d4f5c-p2t8w").unwrap();
    assert_eq!(ratings.ports.get("9080"), Some(&9080));
    // A selector-less Service carries its hand-written endpoints inline.
    let Resource::ServiceEntry(db) = snap
        .get_by(Kind::ServiceEntry, "shop", "legacy-db")
        .unwrap()
        .resource
        .as_ref()
    else {
        panic!()
    };
    assert_eq!(
        db.spec.endpoints[0].address.as_deref(),
        Some("192.168.50.7")
    );

    // Istio and MCS resources, through the same model as files.
    assert!(snap
        .get_by(Kind::VirtualService, "shop", "reviews")
        .is_some());
    assert!(snap
        .get_by(Kind::DestinationRule, "shop", "reviews")
        .is_some());
    assert!(snap
        .get_by(Kind::ServiceExport, "shop", "reviews")
        .is_some());
    assert!(snap
        .get_by(Kind::PeerAuthentication, "istio-system", "default")
        .is_some());
    assert!(!snap.has_errors(), "{:?}", snap.diagnostics());

    // Lists were paginated (limit 2, then continue) and watches asked for bookmarks.
    let pod_lists = lists_of(&server, "pods");
    assert_eq!(
        pod_lists[0].query.get("limit").map(String::as_str),
        Some("2")
    );
    assert!(
        pod_lists.iter().any(|r| r.query.contains_key("continue")),
        "{pod_lists:?}"
    );
    let w = watches_of(&server, "pods");
    assert_eq!(
        w[0].query.get("allowWatchBookmarks").map(String::as_str),
        Some("true")
    );
}

#[tokio::test]
async fn the_file_layer_is_merged_and_wins() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: isthmus.io/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: mesh\n  namespace: istio-system\nspec:\n  clusterId: east\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n  namespace: shop\nspec:\n  host: reviews\n",
    )
    .unwrap();
    let file_store = ConfigStore::new();
    let base = file_store.subscribe();
    let _files = isthmus_control::source::FileSource::new(vec![dir.path().to_path_buf()])
        .start(file_store)
        .await
        .unwrap();
    let store = ConfigStore::new();
    let rx = store.subscribe();
    let _h = KubeSource::new(server.client())
        .with_config(config())
        .with_base(base)
        .start(store)
        .await
        .unwrap();
    let snap = rx.borrow().clone();
    assert_eq!(snap.mesh_config().unwrap().spec.cluster_id, "east");
    let dr = snap
        .get_by(Kind::DestinationRule, "shop", "reviews")
        .unwrap();
    assert!(
        dr.location.to_string().contains("mesh.yaml"),
        "the file's copy wins: {}",
        dr.location
    );
    assert!(snap.errors().any(|d| d.code == Code::DuplicateResource));
    assert!(snap.get_by(Kind::ServiceEntry, "shop", "reviews").is_some());
}

fn tls_secret(namespace: &str, name: &str, secret_type: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": secret_type,
        "metadata": {"name": name, "namespace": namespace,
            "annotations": {"cert-manager.io/issuer-name": "letsencrypt"}},
        "data": data})
}

fn gateway(namespace: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "public", "namespace": namespace},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["shop.example.com"],
            "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}}]}})
}

/// Gateway credentials: TLS Secrets (typed, or generic with tls.crt /
/// ca.crt) of namespaces that have a Gateway reach the store; other Secrets
/// and other namespaces' do not, and a Secret follows its changes.
#[tokio::test]
async fn tls_secrets_of_gateway_namespaces_feed_the_store() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["shop.example.com".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls = json!({"tls.crt": b64(&cert.pem()), "tls.key": b64(&key.serialize_pem())});
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    server.put(gateway("ingress"));
    server.put(tls_secret(
        "ingress",
        "shop-cert",
        "kubernetes.io/tls",
        tls.clone(),
    ));
    server.put(tls_secret(
        "ingress",
        "shop-cert-cacert",
        "Opaque",
        json!({"ca.crt": b64(&cert.pem())}),
    ));
    server.put(tls_secret(
        "ingress",
        "db-password",
        "Opaque",
        json!({"password": b64("hunter2")}),
    ));
    server.put(tls_secret(
        "shop",
        "other-cert",
        "kubernetes.io/tls",
        tls.clone(),
    ));
    let store = start(&server).await;
    let snap = store.current();
    assert!(
        snap.get_by(Kind::Secret, "ingress", "shop-cert").is_some(),
        "{:?}",
        keys(&snap)
    );
    assert!(snap
        .get_by(Kind::Secret, "ingress", "shop-cert-cacert")
        .is_some());
    assert!(
        snap.get_by(Kind::Secret, "ingress", "db-password")
            .is_none(),
        "not a credential"
    );
    assert!(
        snap.get_by(Kind::Secret, "shop", "other-cert").is_none(),
        "no Gateway in shop"
    );
    let Some(Resource::Secret(s)) = snap
        .get_by(Kind::Secret, "ingress", "shop-cert")
        .map(|r| &*r.resource)
    else {
        panic!("shop-cert is a Secret");
    };
    assert_eq!(s.tls_credential().unwrap().cert_chain, cert.pem());

    // A Gateway appears in shop: its Secret is published.
    server.put(gateway("shop"));
    eventually("shop's TLS Secret once shop has a Gateway", WAIT, || {
        store
            .current()
            .get_by(Kind::Secret, "shop", "other-cert")
            .is_some()
    })
    .await;
    // A credential that stops being one (keys replaced) leaves the store.
    server.put(tls_secret(
        "ingress",
        "shop-cert-cacert",
        "Opaque",
        json!({"note": b64("gone")}),
    ));
    eventually(
        "a Secret that is no credential any more to leave",
        WAIT,
        || {
            store
                .current()
                .get_by(Kind::Secret, "ingress", "shop-cert-cacert")
                .is_none()
        },
    )
    .await;
    // Only reads: the source never writes a Secret.
    assert!(server
        .requests()
        .iter()
        .filter(|r| r.path.contains("/secrets"))
        .all(|r| r.method == "GET"));
}
