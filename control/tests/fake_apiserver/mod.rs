//! A fake Kubernetes API server speaking the real list/watch protocol over
//! real HTTP (hyper 1 on 127.0.0.1:0), so kube's own client and watcher run
//! unmodified against it:
//! - lists honour `limit`/`continue` (a continued list serves the snapshot
//!   taken by its first page) and `labelSelector` (equality only);
//! - watches replay the events after `resourceVersion`, then stream live
//!   ones as newline-delimited JSON, with BOOKMARK events on demand for
//!   watches that asked for them (`allowWatchBookmarks`);
//! - a resume from a compacted resourceVersion gets an ERROR event with
//!   code 410 (Gone), as the real server does; `expire_watches` sends that
//!   410 to every open watch; `disconnect_watches` just closes them;
//! - `hold_continued_lists` parks every continued list page until released,
//!   so a test can look at the store in the middle of a relist;
//! - `fieldSelector=metadata.name=NAME` on lists and watches;
//! - create, get, delete, server-side apply and merge patches (also on the
//!   status subresource), and TokenReview with a token table.
#![allow(dead_code)]

mod handler;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// (apiVersion, kind, plural, namespaced) of every type the fake serves.
pub const TYPES: &[(&str, &str, &str, bool)] = &[
    ("v1", "Service", "services", true),
    ("v1", "Pod", "pods", true),
    ("v1", "Node", "nodes", false),
    ("v1", "Namespace", "namespaces", false),
    (
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    (
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
        true,
    ),
    (
        "networking.istio.io/v1",
        "DestinationRule",
        "destinationrules",
        true,
    ),
    ("networking.istio.io/v1", "Gateway", "gateways", true),
    (
        "networking.istio.io/v1",
        "ServiceEntry",
        "serviceentries",
        true,
    ),
    (
        "networking.istio.io/v1",
        "WorkloadEntry",
        "workloadentries",
        true,
    ),
    ("networking.istio.io/v1", "Sidecar", "sidecars", true),
    (
        "security.istio.io/v1",
        "PeerAuthentication",
        "peerauthentications",
        true,
    ),
    (
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
    ),
    (
        "security.istio.io/v1",
        "RequestAuthentication",
        "requestauthentications",
        true,
    ),
    (
        "multicluster.x-k8s.io/v1alpha1",
        "ServiceExport",
        "serviceexports",
        true,
    ),
    (
        "multicluster.x-k8s.io/v1alpha1",
        "ServiceImport",
        "serviceimports",
        true,
    ),
    ("events.k8s.io/v1", "Event", "events", true),
    ("v1", "Secret", "secrets", true),
    (
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
];

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

struct Collection {
    api_version: String,
    kind: String,
    namespaced: bool,
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, type, object) for watch replay.
    events: Vec<(u64, &'static str, Value)>,
}

struct Subscriber {
    collection: String,
    namespace: Option<String>,
    bookmarks: bool,
    /// `fieldSelector=metadata.name=NAME`.
    name: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct Inner {
    rv: u64,
    /// Watches may not resume from a resourceVersion below this.
    compacted: u64,
    collections: BTreeMap<String, Collection>,
    subscribers: Vec<Subscriber>,
    continues: HashMap<String, (u64, Vec<Value>)>,
    next_continue: u64,
    /// token -> (username, audiences)
    tokens: HashMap<String, (String, Vec<String>)>,
    log: Vec<Logged>,
    held_pages: usize,
    /// Open watches receive nothing (a stalled connection); the events
    /// still enter the history.
    stalled: bool,
    /// Collections every request to gets 403 Forbidden (RBAC denies them).
    forbidden: Vec<String>,
}

/// The fake API server; dropping it stops serving.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    hold: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gv_key(api_version: &str, plural: &str) -> String {
    format!("{api_version}/{plural}")
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let mut collections = BTreeMap::new();
        for (av, kind, plural, namespaced) in TYPES {
            collections.insert(
                gv_key(av, plural),
                Collection {
                    api_version: av.to_string(),
                    kind: kind.to_string(),
                    namespaced: *namespaced,
                    objects: BTreeMap::new(),
                    events: Vec::new(),
                },
            );
        }
        let inner = Arc::new(Mutex::new(Inner {
            rv: 100,
            compacted: 0,
            collections,
            subscribers: Vec::new(),
            continues: HashMap::new(),
            next_continue: 0,
            tokens: HashMap::new(),
            log: Vec::new(),
            held_pages: 0,
            stalled: false,
            forbidden: Vec::new(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, hold_rx) = watch::channel(false);
        let state = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let hold_rx = hold_rx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        let hold_rx = hold_rx.clone();
                        async move { Ok::<_, Infallible>(handler::handle(state, hold_rx, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApiServer {
            addr,
            inner,
            hold,
            task,
        }
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Stops serving a type, as when its CRD is not installed.
    pub fn unserve(&self, api_version: &str, plural: &str) {
        self.lock().collections.remove(&gv_key(api_version, plural));
    }

    /// Answers every request for a type with 403, as RBAC does.
    pub fn forbid(&self, api_version: &str, plural: &str) {
        self.lock().forbidden.push(gv_key(api_version, plural));
    }

    /// Creates or replaces an object (ADDED or MODIFIED event).
    pub fn put(&self, object: Value) -> u64 {
        self.lock().put(object)
    }

    /// Deletes an object (DELETED event); false if it did not exist.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.lock().delete(api_version, kind, namespace, name)
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let inner = self.lock();
        let (key, _) = inner.collection_of(api_version, kind)?;
        inner
            .collections
            .get(&key)?
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let inner = self.lock();
        let Some((key, _)) = inner.collection_of(api_version, kind) else {
            return Vec::new();
        };
        inner.collections[&key].objects.values().cloned().collect()
    }

    /// Loads every `*.json` file of `dir` (a JSON array of objects each).
    pub fn load_fixtures(&self, dir: &Path) {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let items: Vec<Value> =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for item in items {
                self.put(item);
            }
        }
    }

    /// A BOOKMARK with the current resourceVersion to every watch that
    /// asked for bookmarks.
    pub fn bookmark(&self) {
        let mut inner = self.lock();
        let rv = inner.rv;
        let collections: Vec<(String, String, String)> = inner
            .collections
            .iter()
            .map(|(k, c)| (k.clone(), c.api_version.clone(), c.kind.clone()))
            .collect();
        inner.subscribers.retain(|s| {
            if !s.bookmarks {
                return true;
            }
            let Some((_, av, kind)) = collections.iter().find(|(k, _, _)| *k == s.collection)
            else {
                return true;
            };
            let line = json!({"type": "BOOKMARK", "object": {
                "apiVersion": av, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}
            }});
            s.tx.send(ndjson(&line)).is_ok()
        });
    }

    /// Closes every open watch without a word (a dropped connection).
    pub fn disconnect_watches(&self) {
        self.lock().subscribers.clear();
    }

    /// Compacts history: every open watch gets `410 Gone` and closes, and
    /// no watch may resume from before now, so every watcher must relist.
    pub fn expire_watches(&self) {
        let mut inner = self.lock();
        inner.compacted = inner.rv;
        let gone = ndjson(&json!({"type": "ERROR", "object": status_json(
            410, "Expired", "too old resource version: the watch cache was compacted")}));
        inner.stalled = false;
        for s in inner.subscribers.drain(..) {
            let _ = s.tx.send(gone.clone());
        }
    }

    /// Stops (or resumes) delivering events to the open watches.
    pub fn stall_watches(&self, stalled: bool) {
        self.lock().stalled = stalled;
    }

    /// Parks every list request carrying a `continue` token until released.
    pub fn hold_continued_lists(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// How many list pages are parked right now.
    pub fn held_pages(&self) -> usize {
        self.lock().held_pages
    }

    pub fn open_watches(&self, plural: &str) -> usize {
        self.lock()
            .subscribers
            .iter()
            .filter(|s| s.collection.ends_with(&format!("/{plural}")) && !s.tx.is_closed())
            .count()
    }

    /// Registers a service-account token for TokenReview.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str]) {
        self.lock().tokens.insert(
            token.to_string(),
            (
                username.to_string(),
                audiences.iter().map(|a| a.to_string()).collect(),
            ),
        );
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }
}

impl Inner {
    fn collection_of(&self, api_version: &str, kind: &str) -> Option<(String, bool)> {
        self.collections
            .iter()
            .find(|(_, c)| c.api_version == api_version && c.kind == kind)
            .map(|(k, c)| (k.clone(), c.namespaced))
    }

    fn put(&mut self, mut object: Value) -> u64 {
        let av = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let (key, namespaced) = self
            .collection_of(&av, &kind)
            .unwrap_or_else(|| panic!("the fake does not serve {av} {kind}"));
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = if namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        if namespaced {
            object["metadata"]["namespace"] = json!(ns);
        }
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let coll = self.collections.get_mut(&key).unwrap();
        let existed = coll.objects.contains_key(&(ns.clone(), name.clone()));
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = match coll.objects.get(&(ns.clone(), name.clone())) {
                Some(old) => old["metadata"]["uid"].clone(),
                None => json!(format!("uid-{rv}")),
            };
        }
        coll.objects.insert((ns.clone(), name), object.clone());
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        coll.events.push((rv, kind, object.clone()));
        self.notify(&key, &ns, kind, &object);
        rv
    }

    fn delete(&mut self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some((key, _)) = self.collection_of(api_version, kind) else {
            return false;
        };
        self.rv += 1;
        let rv = self.rv;
        let coll = self.collections.get_mut(&key).unwrap();
        let Some(mut object) = coll
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        coll.events.push((rv, "DELETED", object.clone()));
        self.notify(&key, namespace, "DELETED", &object);
        true
    }

    fn notify(&mut self, key: &str, ns: &str, kind: &str, object: &Value) {
        if self.stalled {
            return;
        }
        let line = ndjson(&json!({"type": kind, "object": object}));
        self.subscribers.retain(|s| {
            if s.collection != key || s.namespace.as_deref().is_some_and(|n| n != ns) {
                return true;
            }
            if s.name
                .as_ref()
                .is_some_and(|n| object["metadata"]["name"] != *n)
            {
                return true;
            }
            s.tx.send(line.clone()).is_ok()
        });
    }
}

fn ndjson(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap();
    s.push(b'\n');
    Bytes::from(s)
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut check: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
