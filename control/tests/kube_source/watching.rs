//! Keeping the store current: watch events, bookmarks and resumed watches
//! after a disconnect, and a 410 Gone relist that replaces the state only
//! once it is complete.

use isthmus_control::config::Kind;
use isthmus_control::source::kube::KubeSourceConfig;
use serde_json::{json, Value};

use crate::fake_apiserver::{eventually, FakeApiServer};
use crate::{config, fixtures, keys, lists_of, start, start_with, watches_of, workload, WAIT};

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
