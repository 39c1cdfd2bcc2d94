//! The Kubernetes source and its write-back against a fake API server
//! speaking the real list/watch protocol over HTTP (the TokenReview
//! authenticator is in kube_token_review.rs).

mod fake_apiserver;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::{eventually, FakeApiServer};
use isthmus_control::analyze::Code;
use isthmus_control::config::{Kind, Resource};
use isthmus_control::source::kube::{
    KubeSource, KubeSourceConfig, KubeSourceHandle, WriteBack, WriteBackConfig,
};
use isthmus_control::store::{ConfigSnapshot, ConfigStore};
use serde_json::{json, Value};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube/bookinfo")
}

fn config() -> KubeSourceConfig {
    KubeSourceConfig {
        // Small pages, so every list of the fixtures is paginated.
        page_size: 2,
        debounce: Duration::from_millis(20),
        initial_sync_timeout: WAIT,
        ..KubeSourceConfig::default()
    }
}

/// The store's reader, and the running source.
struct Started {
    rx: watch::Receiver<Arc<ConfigSnapshot>>,
    handle: KubeSourceHandle,
}

impl Started {
    fn current(&self) -> Arc<ConfigSnapshot> {
        self.rx.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.rx.clone()
    }
}

async fn start(server: &FakeApiServer) -> Started {
    start_with(server, config()).await
}

async fn start_with(server: &FakeApiServer, config: KubeSourceConfig) -> Started {
    let store = ConfigStore::new();
    let rx = store.subscribe();
    let handle = KubeSource::new(server.client())
        .with_config(config)
        .start(store)
        .await
        .expect("the source starts against the fake API server");
    Started { rx, handle }
}

fn workload<'a>(
    snap: &'a ConfigSnapshot,
    name: &str,
) -> Option<&'a isthmus_control::config::WorkloadEntrySpec> {
    snap.workload_entries()
        .find(|w| w.namespace() == "shop" && w.name() == name)
        .map(|w| &w.spec)
}

fn keys(snap: &ConfigSnapshot) -> BTreeSet<String> {
    snap.iter().map(|(k, _)| k.to_string()).collect()
}

fn lists_of(server: &FakeApiServer, plural: &str) -> Vec<fake_apiserver::Logged> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/{plural}")))
        .filter(|r| !r.query.contains_key("watch"))
        .collect()
}

fn watches_of(server: &FakeApiServer, plural: &str) -> Vec<fake_apiserver::Logged> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/{plural}")))
        .filter(|r| r.query.contains_key("watch"))
        .collect()
}

fn pod(name: &str, version: &str, ip: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "reviews", "version": version}},
        "spec": {"nodeName": node, "serviceAccountName": "bookinfo-reviews", "containers": [{"name": "reviews", "image": "reviews"}]},
        "status": {"phase": "Running", "podIP": ip}})
}

fn slice(name: &str, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": endpoints})
}

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
async fn watch_events_bookmarks_and_disconnects_keep_the_store_current() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    let store = start(&server).await;
    let mut rx = store.subscribe();
    eventually("watches open", WAIT, || {
        server.open_watches("pods") == 1 && server.open_watches("nodes") == 1
    })
    .await;

    // A new ready replica appears through the watch.
    server.put(pod("reviews-v3-1", "v3", "10.244.2.30", "worker-b"));
    server.put(slice(
        "reviews-new",
        json!([{"addresses": ["10.244.2.30"], "conditions": {"ready": true},
        "targetRef": {"kind": "Pod", "name": "reviews-v3-1", "namespace": "shop"}}]),
    ));
    eventually("the new replica", WAIT, || {
        workload(&rx.borrow_and_update(), "reviews-v3-1").is_some()
    })
    .await;
    // It stops being ready: it is no longer an instance.
    server.put(slice(
        "reviews-new",
        json!([{"addresses": ["10.244.2.30"], "conditions": {"ready": false},
        "targetRef": {"kind": "Pod", "name": "reviews-v3-1", "namespace": "shop"}}]),
    ));
    eventually("the unready replica gone", WAIT, || {
        workload(&rx.borrow_and_update(), "reviews-v3-1").is_none()
    })
    .await;

    // A bookmark moves the nodes watcher's resourceVersion although no Node changed.
    // It shows after a disconnect: the watch resumes from the bookmark.
    server.bookmark();
    let bookmark_rv = server.resource_version();
    let before_lists = lists_of(&server, "pods").len();
    let before = store.current();
    server.disconnect_watches();
    // Changes while disconnected arrive when the watch resumes (replayed
    // from the last resourceVersion), without a relist.
    server.delete(
        "networking.istio.io/v1",
        "VirtualService",
        "shop",
        "reviews",
    );
    let mut changed = pod("reviews-v1-7c9d8f-x4k2p", "v1", "10.244.1.15", "worker-a");
    changed["metadata"]["labels"]["track"] = json!("stable");
    server.put(changed);
    eventually("the resumed watches replay what was missed", WAIT, || {
        let s = rx.borrow_and_update();
        s.get_by(Kind::VirtualService, "shop", "reviews").is_none()
            && workload(&s, "reviews-v1-7c9d8f-x4k2p")
                .is_some_and(|w| w.labels.contains_key("track"))
    })
    .await;
    // Nothing else was lost meanwhile.
    let after = store.current();
    let mut expected = keys(&before);
    expected.remove("VirtualService shop/reviews");
    assert_eq!(keys(&after), expected);
    assert_eq!(
        lists_of(&server, "pods").len(),
        before_lists,
        "a disconnect resumes the watch, it does not relist"
    );
    eventually("nodes watch resumed", WAIT, || {
        server.open_watches("nodes") == 1
    })
    .await;
    let resumed: Vec<u64> = watches_of(&server, "nodes")
        .iter()
        .filter_map(|r| r.query.get("resourceVersion")?.parse().ok())
        .collect();
    assert!(
        resumed.last().is_some_and(|rv| *rv >= bookmark_rv),
        "the nodes watch resumes from the bookmark ({bookmark_rv}), got {resumed:?}"
    );
}

#[tokio::test]
async fn gone_relists_and_replaces_the_state_only_when_the_relist_is_complete() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    // One object per page: every relist of more than one object pauses.
    let store = start_with(
        &server,
        KubeSourceConfig {
            page_size: 1,
            ..config()
        },
    )
    .await;
    eventually("watches open", WAIT, || server.open_watches("pods") == 1).await;
    let before = store.current();
    let lists_before = lists_of(&server, "pods").len();

    // A deletion the watchers never hear of (stalled connections), then
    // history is compacted: every watch gets 410 Gone and must relist; the
    // second page of every relist is held back.
    server.stall_watches(true);
    server.delete("v1", "Pod", "shop", "reviews-v2-5b8c7d-m9q1z");
    server.hold_continued_lists(true);
    server.expire_watches();
    // Services, EndpointSlices, Pods, Nodes, Namespaces, ServiceExports.
    eventually("relists stuck on their second page", WAIT, || {
        server.held_pages() >= 5
    })
    .await;
    // Half-listed types are not applied: the last good state is all there.
    let during = store.current();
    assert_eq!(
        keys(&during),
        keys(&before),
        "a relist in progress changed the store"
    );

    server.hold_continued_lists(false);
    let mut rx = store.subscribe();
    eventually(
        "the completed relist drops what was deleted meanwhile",
        WAIT,
        || workload(&rx.borrow_and_update(), "reviews-v2-5b8c7d-m9q1z").is_none(),
    )
    .await;
    let after = store.current();
    let mut expected = keys(&before);
    expected.remove("WorkloadEntry shop/reviews-v2-5b8c7d-m9q1z");
    assert_eq!(keys(&after), expected);
    assert!(
        lists_of(&server, "pods").len() > lists_before,
        "410 made the pods watcher relist"
    );

    // The relisted watchers watch again and see new changes.
    eventually("watching again", WAIT, || server.open_watches("pods") == 1).await;
    server.delete("v1", "Pod", "shop", "ratings-v1-6d4f5c-p2t8w");
    eventually("a change after the relist", WAIT, || {
        workload(&rx.borrow_and_update(), "ratings-v1-6d4f5c-p2t8w").is_none()
    })
    .await;
}

#[tokio::test]
async fn invalid_objects_are_reported_and_skipped_keeping_the_last_good_version() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    let store = start(&server).await;
    let mut rx = store.subscribe();

    let mut vs = server
        .get(
            "networking.istio.io/v1",
            "VirtualService",
            "shop",
            "reviews",
        )
        .unwrap();
    vs["spec"]["http"][0]["route"][0]["weight"] = json!(50);
    server.put(vs);
    server.put(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "typo", "namespace": "shop"}, "spec": {"host": "ratings", "trafficPolcy": {}}}));
    eventually("both reported", WAIT, || {
        rx.borrow_and_update().errors().count() == 2
    })
    .await;
    let snap = store.current();
    let weights = snap
        .errors()
        .find(|d| d.code == Code::WeightsNotHundred)
        .expect("weights finding");
    assert_eq!(
        weights.location.to_string(),
        "kube://virtualservices/shop/reviews:1:1"
    );
    assert!(
        weights.message.contains("last good version"),
        "{}",
        weights.message
    );
    let Resource::VirtualService(kept) = snap
        .get_by(Kind::VirtualService, "shop", "reviews")
        .unwrap()
        .resource
        .as_ref()
    else {
        panic!()
    };
    assert_eq!(
        kept.spec.http[0].route[0].weight,
        Some(80),
        "the last good version stays"
    );
    assert!(snap
        .errors()
        .any(|d| d.code == Code::UnknownField && d.message.contains("trafficPolcy")));
    assert!(snap.get_by(Kind::DestinationRule, "shop", "typo").is_none());

    // The owners are told where they look: a Warning Event on the object.
    eventually("events posted", WAIT, || {
        server.list("events.k8s.io/v1", "Event").len() == 2
    })
    .await;
    let events = server.list("events.k8s.io/v1", "Event");
    let on_vs = events
        .iter()
        .find(|e| e["regarding"]["name"] == "reviews")
        .expect("event on the VirtualService");
    assert_eq!(on_vs["type"], "Warning");
    assert_eq!(on_vs["reason"], "InvalidConfiguration");
    assert_eq!(on_vs["regarding"]["kind"], "VirtualService");
    assert!(on_vs["note"].as_str().unwrap().contains("100"), "{on_vs}");

    // Fixed: the finding goes and the new version is used.
    let mut vs = server
        .get(
            "networking.istio.io/v1",
            "VirtualService",
            "shop",
            "reviews",
        )
        .unwrap();
    vs["spec"]["http"][0]["route"][0]["weight"] = json!(50);
    vs["spec"]["http"][0]["route"][1]["weight"] = json!(50);
    server.put(vs);
    eventually("fixed", WAIT, || {
        rx.borrow_and_update().errors().count() == 1
    })
    .await;
    let snap = store.current();
    let Resource::VirtualService(vs) = snap
        .get_by(Kind::VirtualService, "shop", "reviews")
        .unwrap()
        .resource
        .as_ref()
    else {
        panic!()
    };
    assert_eq!(vs.spec.http[0].route[0].weight, Some(50));
}

#[tokio::test]
async fn missing_crds_do_not_block_start_and_are_picked_up_later_as_empty() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    server.unserve("networking.istio.io/v1", "sidecars");
    server.unserve("security.istio.io/v1", "requestauthentications");
    let store = start(&server).await;
    assert!(store
        .current()
        .get_by(Kind::ServiceEntry, "shop", "reviews")
        .is_some());
}

#[tokio::test]
async fn an_unreachable_api_server_fails_start_naming_what_is_missing() {
    let server = FakeApiServer::start().await;
    server.unserve("v1", "pods");
    let store = ConfigStore::new();
    let err = KubeSource::new(server.client())
        .with_config(KubeSourceConfig {
            initial_sync_timeout: Duration::from_millis(1500),
            ..config()
        })
        .start(store)
        .await
        .expect_err("pods cannot be listed");
    let text = err.to_string();
    assert!(text.contains("pods"), "{text}");
    assert!(!text.contains("services,"), "services were listed: {text}");
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

/// An operator may deny the control plane all Secrets (no credentialName
/// in use): the source still starts, with no Secrets.
#[tokio::test]
async fn forbidden_secrets_do_not_block_start() {
    let server = FakeApiServer::start().await;
    server.load_fixtures(&fixtures());
    server.forbid("v1", "secrets");
    let store = start(&server).await;
    let snap = store.current();
    assert!(snap.get_by(Kind::ServiceEntry, "shop", "reviews").is_some());
    assert!(!snap.iter().any(|(k, _)| k.kind == Kind::Secret));
}
