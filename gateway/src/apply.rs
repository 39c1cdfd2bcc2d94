//! The single owner of configuration: takes converted resources, builds
//! the runtime objects, and publishes them (clusters through a `watch`,
//! listeners through the listener manager). A failure leaves the last good
//! configuration running.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{ClusterConfig, ListenerConfig, LoadAssignment, RouteTable, SecretConfig};
use crate::listener::{ListenerError, ListenerManager};
use crate::state::{build_clusters, build_listener, ClusterTable, ResourceSet, RouteTables};
use crate::tls::CertReceiver;

/// One accepted xDS response, converted.
#[derive(Debug, Clone)]
pub enum Update {
    /// Full cluster set (CDS is state of the world).
    Clusters(BTreeMap<String, ClusterConfig>),
    /// Full listener set (LDS is state of the world).
    Listeners(BTreeMap<String, ListenerConfig>),
    /// Assignments by EDS name; `keep` lists the still-subscribed names
    /// (others are dropped).
    Endpoints {
        assignments: BTreeMap<String, LoadAssignment>,
        keep: Vec<String>,
    },
    /// Route configurations by name; `keep` as for endpoints.
    Routes {
        routes: BTreeMap<String, RouteTable>,
        keep: Vec<String>,
    },
    /// Secrets by name; `keep` as for endpoints.
    Secrets {
        secrets: BTreeMap<String, SecretConfig>,
        keep: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("building the cluster table failed: {0}")]
    Build(String),
}

#[derive(Debug)]
pub struct Applier {
    set: ResourceSet,
    clusters_tx: watch::Sender<Arc<ClusterTable>>,
    dump_tx: watch::Sender<Arc<ResourceSet>>,
    routes_tx: watch::Sender<Arc<RouteTables>>,
    listeners: ListenerManager,
    cert: Option<CertReceiver>,
}

impl Applier {
    pub fn new(
        clusters_tx: watch::Sender<Arc<ClusterTable>>,
        dump_tx: watch::Sender<Arc<ResourceSet>>,
        routes_tx: watch::Sender<Arc<RouteTables>>,
        listeners: ListenerManager,
        cert: Option<CertReceiver>,
    ) -> Self {
        Self {
            set: ResourceSet::default(),
            clusters_tx,
            dump_tx,
            routes_tx,
            listeners,
            cert,
        }
    }

    pub fn resources(&self) -> &ResourceSet {
        &self.set
    }

    pub async fn apply(&mut self, update: Update) -> Result<(), ApplyError> {
        let mut next = self.set.clone();
        let mut rebuild_listeners = false;
        let mut secrets_changed = false;
        match update {
            Update::Clusters(c) => next.clusters = c,
            Update::Listeners(l) => {
                next.listeners = l;
                rebuild_listeners = true;
            }
            Update::Endpoints { assignments, keep } => {
                // Unrequested resources (a server treating an empty
                // subscription as wildcard) are ignored.
                next.endpoints.retain(|k, _| keep.contains(k));
                next.endpoints
                    .extend(assignments.into_iter().filter(|(k, _)| keep.contains(k)));
            }
            Update::Routes { routes, keep } => {
                next.routes.retain(|k, _| keep.contains(k));
                next.routes
                    .extend(routes.into_iter().filter(|(k, _)| keep.contains(k)));
                // Routes are read per request: no cluster or listener rebuild.
                self.routes_tx.send_replace(Arc::new(
                    next.routes
                        .iter()
                        .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                        .collect(),
                ));
                self.set = next;
                self.dump_tx.send_replace(Arc::new(self.set.clone()));
                return Ok(());
            }
            Update::Secrets { secrets, keep } => {
                next.secrets.retain(|k, _| keep.contains(k));
                next.secrets
                    .extend(secrets.into_iter().filter(|(k, _)| keep.contains(k)));
                rebuild_listeners = true;
                secrets_changed = true;
            }
        }
        // Clusters first, so listeners that reference new clusters find them.
        let previous = self.clusters_tx.borrow().clone();
        // Balancer tables (Maglev: 65537 entries per priority) and rustls
        // configs are CPU work: keep it off the async workers.
        let (set, cert) = (next.clone(), self.cert.clone());
        let table = tokio::task::spawn_blocking(move || {
            build_clusters(&set, cert.as_ref(), &previous, secrets_changed)
        })
        .await
        .map_err(|e| ApplyError::Build(e.to_string()))?;
        if rebuild_listeners {
            let runtimes = next
                .listeners
                .values()
                .map(|l| Arc::new(build_listener(l, &next, self.cert.as_ref())))
                .collect();
            // Publish clusters before listeners go live; if binding fails the
            // new clusters are a superset-compatible change and stay.
            self.clusters_tx.send_replace(Arc::new(table));
            self.listeners.apply(runtimes).await?;
        } else {
            self.clusters_tx.send_replace(Arc::new(table));
        }
        self.set = next;
        self.dump_tx.send_replace(Arc::new(self.set.clone()));
        Ok(())
    }
}
