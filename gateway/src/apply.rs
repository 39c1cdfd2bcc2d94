//! The single owner of configuration: takes converted resources, builds
//! the runtime objects, and publishes them (clusters through a `watch`,
//! listeners through the listener manager). A failure leaves the last good
//! configuration running.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{ClusterConfig, ListenerConfig, LoadAssignment, RouteTable, SecretConfig};
use crate::listener::{ListenerError, ListenerManager};
use crate::resolve::{DnsClusters, ResolvedMap, Resolver, ResolverOptions};
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
    /// The DNS proxy's name table (wildcard, state of the world).
    NameTable(crate::dnsproxy::NameIndex),
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
    /// Resolution tasks of STRICT_DNS/LOGICAL_DNS clusters and their output.
    dns: DnsClusters,
    resolved_rx: watch::Receiver<Arc<ResolvedMap>>,
    /// The name table for the DNS proxy.
    names_tx: watch::Sender<Arc<crate::dnsproxy::NameIndex>>,
}

impl Applier {
    pub fn new(
        clusters_tx: watch::Sender<Arc<ClusterTable>>,
        dump_tx: watch::Sender<Arc<ResourceSet>>,
        routes_tx: watch::Sender<Arc<RouteTables>>,
        listeners: ListenerManager,
        cert: Option<CertReceiver>,
    ) -> Self {
        let (dns, resolved_rx) = DnsClusters::new(Resolver::new(&ResolverOptions::default()));
        Self {
            set: ResourceSet::default(),
            clusters_tx,
            dump_tx,
            routes_tx,
            listeners,
            cert,
            dns,
            resolved_rx,
            names_tx: watch::Sender::new(Arc::default()),
        }
    }

    /// The name table as received (the DNS proxy reads it per query).
    pub fn name_table(&self) -> watch::Receiver<Arc<crate::dnsproxy::NameIndex>> {
        self.names_tx.subscribe()
    }

    /// Resolves DNS clusters with `opts` (e.g. a configured upstream
    /// server) instead of the system configuration.
    pub fn with_resolver(mut self, opts: &ResolverOptions) -> Self {
        let (dns, resolved_rx) = DnsClusters::new(Resolver::new(opts));
        self.dns = dns;
        self.resolved_rx = resolved_rx;
        self
    }

    /// Completes when a DNS cluster's addresses changed; the owner then
    /// calls [`Applier::apply_resolved`]. Never completes without DNS
    /// clusters. Cancel safe.
    pub async fn resolution_changed(&mut self) {
        if self.resolved_rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Rebuilds the clusters whose resolved addresses changed.
    pub async fn apply_resolved(&mut self) -> Result<(), ApplyError> {
        let mut next = self.set.clone();
        next.resolved = self.resolved_rx.borrow_and_update().as_ref().clone();
        let previous = self.clusters_tx.borrow().clone();
        let (set, cert) = (next.clone(), self.cert.clone());
        let table = tokio::task::spawn_blocking(move || {
            build_clusters(&set, cert.as_ref(), &previous, false)
        })
        .await
        .map_err(|e| ApplyError::Build(e.to_string()))?;
        self.clusters_tx.send_replace(Arc::new(table));
        self.set = next;
        self.dump_tx.send_replace(Arc::new(self.set.clone()));
        Ok(())
    }

    pub fn resources(&self) -> &ResourceSet {
        &self.set
    }

    pub async fn apply(&mut self, update: Update) -> Result<(), ApplyError> {
        let mut next = self.set.clone();
        let mut rebuild_listeners = false;
        let mut secrets_changed = false;
        match update {
            Update::Clusters(c) => {
                self.dns.sync(&c);
                next.clusters = c;
            }
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
            Update::NameTable(index) => {
                // Read per query by the DNS proxy: nothing to rebuild.
                self.names_tx.send_replace(Arc::new(index));
                return Ok(());
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
        next.resolved = self.resolved_rx.borrow_and_update().as_ref().clone();
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
            // rustls configs, and certificate files Gateway servers name,
            // are built off the async workers too.
            let (set, cert) = (next.clone(), self.cert.clone());
            let runtimes = tokio::task::spawn_blocking(move || {
                set.listeners
                    .values()
                    .map(|l| Arc::new(build_listener(l, &set, cert.as_ref())))
                    .collect()
            })
            .await
            .map_err(|e| ApplyError::Build(e.to_string()))?;
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
