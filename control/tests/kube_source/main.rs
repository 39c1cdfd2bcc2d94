//! The Kubernetes source and its write-back against a fake API server
//! speaking the real list/watch protocol over HTTP (the TokenReview
//! authenticator is in kube_token_review.rs).
//!
//! This file holds the shared harness (starting the source, snapshot and
//! request-log helpers); the tests are grouped by behaviour in `model`
//! (what the store holds), `watching` (keeping it current), `faults` (bad
//! objects and an incomplete API server) and `write_back` (MCS status and
//! imports written back to the cluster).

#[path = "../fake_apiserver/mod.rs"]
mod fake_apiserver;

mod faults;
mod model;
mod watching;
mod write_back;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use isthmus_control::source::kube::{KubeSource, KubeSourceConfig, KubeSourceHandle};
use isthmus_control::store::{ConfigSnapshot, ConfigStore};
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
