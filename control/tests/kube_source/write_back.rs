//! The write-back: ServiceExport conditions and ServiceImports from the
//! federation registry, written by server-side apply, with stale imports
//! removed and unchanged registries writing nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_control::source::kube::{WriteBack, WriteBackConfig};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::fake_apiserver::{eventually, FakeApiServer};
use crate::{fixtures, start, WAIT};

fn registry(
    west_reviews_protocol: &str,
    with_details: bool,
) -> isthmus_federation::RegistrySnapshot {
    use isthmus_federation::model::*;
    let info = ClusterInfo {
        id: "west".into(),
        network: "net-west".into(),
        locality: Locality::default(),
        eastwest_tcp: vec!["198.51.100.1:15443".into()],
        eastwest_quic: Vec::new(),
        ingress: Vec::new(),
        intermediate_pem: String::new(),
        roots_pem: Vec::new(),
    };
    let svc = |name: &str, port: u16, proto: &str| {
        let key = ServiceKey {
            namespace: "shop".into(),
            name: name.into(),
        };
        (
            key.clone(),
            ClusterService {
                cluster: "west".into(),
                service: ExportedService {
                    key,
                    ports: vec![ServicePort {
                        name: "http".into(),
                        port,
                        protocol: proto.into(),
                        target_port: port,
                    }],
                    labels: BTreeMap::new(),
                },
                endpoints: Vec::new(),
            },
        )
    };
    let mut west =
        isthmus_federation::ServiceMap::from_iter([svc("reviews", 9080, west_reviews_protocol)]);
    if with_details {
        west.extend([svc("details", 9080, "HTTP")]);
    }
    let mut snap = isthmus_federation::RegistrySnapshot::default();
    snap.clusters.insert("west".into(), info);
    snap.services.insert("west".into(), west);
    snap
}

fn condition<'a>(export: &'a Value, type_: &str) -> &'a Value {
    export["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {export}"))
}

#[tokio::test]
async fn write_back_sets_export_conditions_and_imports_with_server_side_apply() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    // A stale import from an earlier run, and one Isthmus does not own.
    server.put(json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "metadata": {"name": "old", "namespace": "shop", "labels": {"app.kubernetes.io/managed-by": "isthmus"}},
        "spec": {"type": "ClusterSetIP", "ports": [{"port": 80, "protocol": "TCP"}]}}));
    server.put(
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "metadata": {"name": "foreign", "namespace": "shop"},
        "spec": {"type": "ClusterSetIP", "ports": [{"port": 80, "protocol": "TCP"}]}}),
    );
    let store = start(&server).await;
    let (reg_tx, reg_rx) = watch::channel(Arc::new(registry("HTTP", true)));
    let wb = WriteBack::new(server.client(), WriteBackConfig::new("east"));
    let task = tokio::spawn(wb.run(store.subscribe(), reg_rx, store.handle.namespaces()));

    eventually("export conditions and imports", WAIT, || {
        server
            .get(
                "multicluster.x-k8s.io/v1alpha1",
                "ServiceImport",
                "shop",
                "details",
            )
            .is_some()
            && server
                .get(
                    "multicluster.x-k8s.io/v1alpha1",
                    "ServiceImport",
                    "shop",
                    "reviews",
                )
                .is_some()
            && server
                .get(
                    "multicluster.x-k8s.io/v1alpha1",
                    "ServiceExport",
                    "shop",
                    "missing",
                )
                .is_some_and(|e| !e["status"].is_null())
            && server
                .get(
                    "multicluster.x-k8s.io/v1alpha1",
                    "ServiceImport",
                    "shop",
                    "old",
                )
                .is_none()
    })
    .await;
    let reviews = server
        .get(
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceExport",
            "shop",
            "reviews",
        )
        .unwrap();
    assert_eq!(condition(&reviews, "Valid")["status"], "True");
    assert_eq!(condition(&reviews, "Conflict")["status"], "False");
    let missing = server
        .get(
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceExport",
            "shop",
            "missing",
        )
        .unwrap();
    assert_eq!(condition(&missing, "Valid")["status"], "False");
    assert_eq!(condition(&missing, "Valid")["reason"], "NoService");
    let import = server
        .get(
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceImport",
            "shop",
            "reviews",
        )
        .unwrap();
    assert_eq!(import["spec"]["type"], "ClusterSetIP");
    assert_eq!(import["spec"]["ports"][0]["port"], 9080);
    assert_eq!(import["spec"]["ports"][0]["appProtocol"], "http");
    assert_eq!(
        import["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "isthmus"
    );
    assert_eq!(
        import["metadata"]["annotations"]["isthmus.io/clusters"],
        "west"
    );
    assert!(
        server
            .get(
                "multicluster.x-k8s.io/v1alpha1",
                "ServiceImport",
                "shop",
                "foreign"
            )
            .is_some(),
        "not ours: left alone"
    );

    // Every write was a server-side apply by field manager `isthmus`.
    let patches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(patches
        .iter()
        .any(|p| p.path.ends_with("/serviceexports/reviews/status")));
    for p in &patches {
        assert_eq!(
            p.query.get("fieldManager").map(String::as_str),
            Some("isthmus"),
            "{p:?}"
        );
        assert_eq!(
            p.query.get("force").map(String::as_str),
            Some("true"),
            "{p:?}"
        );
        assert!(
            p.content_type
                .as_deref()
                .unwrap_or("")
                .starts_with("application/apply-patch"),
            "{p:?}"
        );
    }

    // West now disagrees on the protocol, and stops exporting details.
    let patches_before = patches.len();
    reg_tx.send_replace(Arc::new(registry("TCP", false)));
    eventually("conflict and import removal", WAIT, || {
        let conflict = server
            .get(
                "multicluster.x-k8s.io/v1alpha1",
                "ServiceExport",
                "shop",
                "reviews",
            )
            .is_some_and(|e| condition(&e, "Conflict")["status"] == "True");
        // The reviews import follows west's protocol change (its last write).
        let import_updated = server
            .get(
                "multicluster.x-k8s.io/v1alpha1",
                "ServiceImport",
                "shop",
                "reviews",
            )
            .is_some_and(|i| i["spec"]["ports"][0].get("appProtocol").is_none());
        conflict
            && import_updated
            && server
                .get(
                    "multicluster.x-k8s.io/v1alpha1",
                    "ServiceImport",
                    "shop",
                    "details",
                )
                .is_none()
    })
    .await;
    let reviews = server
        .get(
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceExport",
            "shop",
            "reviews",
        )
        .unwrap();
    assert_eq!(condition(&reviews, "Conflict")["reason"], "PortConflict");
    assert!(condition(&reviews, "Conflict")["message"]
        .as_str()
        .unwrap()
        .contains("west"));

    // A registry change that changes nothing here (a lease renewal) writes nothing.
    let writes = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert!(writes > patches_before);
    let mut same = registry("TCP", false);
    same.revision = 99;
    reg_tx.send_replace(Arc::new(same));
    // Wait for a pass to have happened by making the next one observable.
    let mut changed = registry("TCP", true);
    changed.revision = 100;
    reg_tx.send_replace(Arc::new(changed));
    eventually("details imported again", WAIT, || {
        server
            .get(
                "multicluster.x-k8s.io/v1alpha1",
                "ServiceImport",
                "shop",
                "details",
            )
            .is_some()
    })
    .await;
    let after = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(after, writes + 1, "only the details import was written");
    task.abort();
}
