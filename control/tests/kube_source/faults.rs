//! Faults the source survives or reports: invalid objects (reported,
//! skipped, last good version kept), missing CRDs, forbidden Secrets, and
//! an API server that cannot be listed at start.

use std::time::Duration;

use isthmus_control::analyze::Code;
use isthmus_control::config::{Kind, Resource};
use isthmus_control::source::kube::{KubeSource, KubeSourceConfig};
use isthmus_control::store::ConfigStore;
use serde_json::json;

use crate::fake_apiserver::{eventually, FakeApiServer};
use crate::{config, fixtures, start, WAIT};

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
