//! The Kubernetes source: watches the API server and feeds the same
//! configuration store as the file source.
//!
//! - `watch`: one kube `watcher` per type (Services, EndpointSlices, Pods,
//!   Nodes, Namespaces, Istio networking/security resources, MCS
//!   ServiceExports), all feeding one channel.
//! - `state`: the one task that owns what was read, derives ServiceEntries
//!   and WorkloadEntries from the core API, and keeps the last good version
//!   of every invalid custom resource.
//! - `convert`: the pure object-to-model conversions.
//! - `writeback`: ServiceExport conditions and ServiceImports, applied with
//!   server-side apply (field manager `isthmus`).
//! - `token_review`: the CA's authenticator for projected service-account
//!   tokens (TokenReview API).
//!
//! The MeshConfig still comes from `--config-dir` (a mounted ConfigMap in a
//! cluster): that directory is read by the file source into a store of its
//! own, and this source publishes the union of both.

pub mod convert;
mod events;
pub mod gateway_address;
pub mod state;
pub mod token_review;
pub mod watch;
pub mod writeback;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::watcher;
use kube::Client;
use tokio::sync::{mpsc, watch as tokio_watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use crate::analyze::{Code, Diagnostic};
use crate::config::ResourceKey;
use crate::store::{ConfigSnapshot, ConfigStore, StoredResource};
use state::KubeState;
use watch::Watched;

pub use token_review::{TokenReviewAuthenticator, TokenReviewConfig};
pub use writeback::{WriteBack, WriteBackConfig};

/// The field manager of every object Isthmus writes.
pub const FIELD_MANAGER: &str = "isthmus";

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("cannot build a Kubernetes client: {0} (check --kubeconfig, KUBECONFIG, or the in-cluster service account)")]
    Client(String),
    #[error("the Kubernetes API server did not deliver a complete first list within {timeout:?}; still waiting for: {pending} (check the API server address and the control plane's RBAC: it needs list/watch on these)")]
    InitialSync { timeout: Duration, pending: String },
    #[error("the Kubernetes source stopped before its first snapshot")]
    Stopped,
}

/// Tuning of the source; the defaults suit a real cluster.
#[derive(Debug, Clone)]
pub struct KubeSourceConfig {
    /// Objects per page of the initial lists (`limit`).
    pub page_size: u32,
    /// Quiet period that batches a burst of watch events into one snapshot.
    pub debounce: Duration,
    /// How long `start` waits for every type's first list.
    pub initial_sync_timeout: Duration,
    /// Post a Kubernetes Event on custom resources Isthmus cannot use.
    pub report_events: bool,
    /// `reportingController` of those Events.
    pub reporter: String,
}

impl Default for KubeSourceConfig {
    fn default() -> Self {
        Self {
            page_size: 500,
            debounce: Duration::from_millis(50),
            initial_sync_timeout: Duration::from_secs(120),
            report_events: true,
            reporter: "isthmus-control".into(),
        }
    }
}

/// Watches one cluster's API server.
pub struct KubeSource {
    client: Client,
    config: KubeSourceConfig,
    base: Option<tokio_watch::Receiver<Arc<ConfigSnapshot>>>,
}

/// Keeps the source's tasks alive; dropping it stops them.
#[derive(Debug)]
pub struct KubeSourceHandle {
    tasks: Vec<JoinHandle<()>>,
    namespaces: tokio_watch::Receiver<Arc<BTreeSet<String>>>,
}

impl KubeSourceHandle {
    /// The namespaces that exist, as last listed/watched.
    pub fn namespaces(&self) -> tokio_watch::Receiver<Arc<BTreeSet<String>>> {
        self.namespaces.clone()
    }

    pub async fn shutdown(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for KubeSourceHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeSource {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            config: KubeSourceConfig::default(),
            base: None,
        }
    }

    pub fn with_config(mut self, config: KubeSourceConfig) -> Self {
        self.config = config;
        self
    }

    /// Also publish the resources of another store (the file source's),
    /// which win over Kubernetes objects of the same kind and name.
    pub fn with_base(mut self, base: tokio_watch::Receiver<Arc<ConfigSnapshot>>) -> Self {
        self.base = Some(base);
        self
    }

    /// Starts the watchers and returns once every type was listed and the
    /// first snapshot published into `store`.
    pub async fn start(self, store: ConfigStore) -> Result<KubeSourceHandle, KubeSourceError> {
        let (tx, rx) = mpsc::channel(1024);
        let wc = watcher::Config::default().page_size(self.config.page_size);
        let mut tasks = watch::spawn_all(&self.client, &wc, &tx);
        drop(tx);
        let (bad_tx, bad_rx) = mpsc::channel(256);
        if self.config.report_events {
            tasks.push(tokio::spawn(events::report(
                self.client.clone(),
                self.config.reporter.clone(),
                bad_rx,
            )));
        }
        let (sync_tx, mut sync_rx) = tokio_watch::channel(SyncStatus::default());
        let (ns_tx, ns_rx) = tokio_watch::channel(Arc::new(BTreeSet::new()));
        let owner = Owner {
            state: KubeState::new(),
            store,
            base: self.base,
            debounce: self.config.debounce,
            frozen_base: None,
            bad: bad_tx,
            sync: sync_tx,
            namespaces: ns_tx,
        };
        tasks.push(tokio::spawn(owner.run(rx)));
        let handle = KubeSourceHandle {
            tasks,
            namespaces: ns_rx,
        };
        let timeout = self.config.initial_sync_timeout;
        let waited = tokio::time::timeout(timeout, async {
            sync_rx.wait_for(|s| s.published).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(_)) => Err(KubeSourceError::Stopped),
            Err(_) => {
                let pending = sync_rx
                    .borrow()
                    .pending
                    .iter()
                    .map(|(w, e)| match e {
                        Some(e) => format!("{w} (last error: {e})"),
                        None => w.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                Err(KubeSourceError::InitialSync { timeout, pending })
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct SyncStatus {
    published: bool,
    pending: Vec<(Watched, Option<String>)>,
}

struct Owner {
    state: KubeState,
    store: ConfigStore,
    base: Option<tokio_watch::Receiver<Arc<ConfigSnapshot>>>,
    debounce: Duration,
    /// The base layer's last snapshot after its source stopped.
    frozen_base: Option<Arc<ConfigSnapshot>>,
    bad: mpsc::Sender<state::BadObject>,
    sync: tokio_watch::Sender<SyncStatus>,
    namespaces: tokio_watch::Sender<Arc<BTreeSet<String>>>,
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<watch::Update>) {
        let mut published = false;
        loop {
            let mut base_changed = false;
            let mut base_closed = false;
            tokio::select! {
                update = rx.recv() => match update {
                    Some(u) => {
                        self.state.apply(u);
                        // Batch the burst that usually follows (a relist, a
                        // rollout) into one snapshot.
                        let deadline = Instant::now() + self.debounce;
                        while let Ok(Some(u)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                            self.state.apply(u);
                        }
                    }
                    None => return,
                },
                changed = base_changed_or_pending(&mut self.base) => {
                    base_closed = changed.is_err();
                    base_changed = true;
                }
            }
            if base_closed {
                // The file source stopped: keep publishing its last snapshot.
                if let Some(base) = self.base.take() {
                    self.frozen_base = Some(base.borrow().clone());
                }
            }
            let changed = self.state.flush();
            for bad in self.state.take_bad_objects() {
                // Reporting is best effort: never stall the source on it.
                let _ = self.bad.try_send(bad);
            }
            self.namespaces.send_if_modified(|current| {
                let now = self.state.namespaces();
                if **current == now {
                    false
                } else {
                    *current = Arc::new(now);
                    true
                }
            });
            if !self.state.synced() {
                let pending = self.state.unsynced();
                self.sync.send_modify(|s| s.pending = pending);
                continue;
            }
            if changed || base_changed || !published {
                let snap = self.publish();
                if !published {
                    info!(
                        version = snap.version(),
                        resources = snap.len(),
                        "Kubernetes source: first snapshot published"
                    );
                } else {
                    tracing::debug!(
                        version = snap.version(),
                        resources = snap.len(),
                        "Kubernetes source published a new snapshot"
                    );
                }
                published = true;
                self.sync.send_modify(|s| {
                    s.published = true;
                    s.pending.clear();
                });
            }
        }
    }

    fn publish(&self) -> Arc<ConfigSnapshot> {
        let (kube, kube_diagnostics) = self.state.layer();
        let base = match &self.base {
            Some(b) => Some(b.borrow().clone()),
            None => self.frozen_base.clone(),
        };
        let (resources, diagnostics) = merge(base.as_deref(), kube, kube_diagnostics);
        self.store.publish(resources, diagnostics)
    }
}

async fn base_changed_or_pending(
    base: &mut Option<tokio_watch::Receiver<Arc<ConfigSnapshot>>>,
) -> Result<(), tokio_watch::error::RecvError> {
    match base {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// The base (file) layer wins over the Kubernetes layer on the same key.
fn merge(
    base: Option<&ConfigSnapshot>,
    kube: BTreeMap<ResourceKey, StoredResource>,
    kube_diagnostics: Vec<Diagnostic>,
) -> (BTreeMap<ResourceKey, StoredResource>, Vec<Diagnostic>) {
    let mut resources: BTreeMap<ResourceKey, StoredResource> = BTreeMap::new();
    let mut diagnostics = Vec::new();
    if let Some(base) = base {
        resources.extend(base.iter().map(|(k, v)| (k.clone(), v.clone())));
        diagnostics.extend(base.diagnostics().iter().cloned());
    }
    diagnostics.extend(kube_diagnostics);
    for (key, stored) in kube {
        match resources.get(&key) {
            Some(first) => diagnostics.push(Diagnostic::new(
                Code::DuplicateResource,
                stored.location.clone(),
                Some(key.to_string()),
                format!(
                    "{key} is also defined at {}; the file's version is used",
                    first.location
                ),
            )),
            None => {
                resources.insert(key, stored);
            }
        }
    }
    (resources, diagnostics)
}

/// A client for `kubeconfig` (a file), or inferred the way kubectl and
/// in-cluster pods do (KUBECONFIG, ~/.kube/config, the service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeSourceError::Client(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeSourceError::Client(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeSourceError::Client(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))
}
