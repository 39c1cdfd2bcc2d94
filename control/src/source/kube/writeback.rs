//! What Isthmus writes back to its cluster's API server, always by
//! server-side apply with field manager `isthmus`:
//! - the MCS conditions of every ServiceExport (`Valid`: a Service of that
//!   name exists; `Conflict`: another cluster exports the same service with
//!   ports that disagree), per KEP-1645;
//! - a ServiceImport for every service other clusters export, so in-cluster
//!   tooling (and `kubectl get serviceimports`) sees the cluster set.
//!
//! The desired state is a pure function of the config snapshot and the
//! registry; the task applies only what differs from what it last applied,
//! so lease renewals (a registry change every second) cost no API calls.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::model::ServiceKey;
use isthmus_federation::RegistrySnapshot;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::convert::is_kube_location;
use super::FIELD_MANAGER;
use crate::config::host::service_fqdn;
use crate::store::ConfigSnapshot;

const MCS_GROUP: &str = "multicluster.x-k8s.io";
const MCS_VERSION: &str = "v1alpha1";
/// Marks the ServiceImports Isthmus owns (and may delete).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "isthmus";
/// Which clusters export an imported service, comma separated.
pub const CLUSTERS_ANNOTATION: &str = "isthmus.io/clusters";

fn mcs_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(MCS_GROUP, MCS_VERSION, kind), plural)
}

/// One status condition, without its transition time (added when applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct WriteBackConfig {
    /// This cluster's id: its own exports are not imported.
    pub cluster_id: String,
    /// Wait before retrying writes that failed.
    pub retry: Duration,
    /// Quiet period batching bursts of input changes.
    pub debounce: Duration,
}

impl WriteBackConfig {
    pub fn new(cluster_id: &str) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            retry: Duration::from_secs(5),
            debounce: Duration::from_millis(100),
        }
    }
}

/// The conditions each ServiceExport read from Kubernetes should carry,
/// by `(namespace, name)`.
pub fn export_conditions(
    config: &ConfigSnapshot,
    registry: &RegistrySnapshot,
    cluster_id: &str,
) -> BTreeMap<(String, String), Vec<Condition>> {
    let mut out = BTreeMap::new();
    for stored in config.of_kind(crate::config::Kind::ServiceExport) {
        if !is_kube_location(&stored.location) {
            continue;
        }
        let (ns, name) = (stored.resource.namespace(), stored.resource.name());
        let host = service_fqdn(name, ns);
        let local = config
            .service_entries()
            .find(|se| se.namespace() == ns && se.spec.hosts.contains(&host));
        let valid = match local {
            Some(_) => Condition {
                type_: "Valid",
                status: true,
                reason: "ServiceExportValid",
                message: format!("Service {ns}/{name} is exported to the cluster set"),
            },
            None => Condition {
                type_: "Valid",
                status: false,
                reason: "NoService",
                message: format!("no Service {ns}/{name} in this cluster; nothing is exported"),
            },
        };
        let key = ServiceKey {
            namespace: ns.to_string(),
            name: name.to_string(),
        };
        let mut conflicts = Vec::new();
        if let Some(se) = local {
            for other in registry.instances(&key).filter(|c| c.cluster != cluster_id) {
                for port in &se.spec.ports {
                    let theirs = other
                        .service
                        .ports
                        .iter()
                        .find(|p| u32::from(p.port) == port.number);
                    if let Some(theirs) = theirs {
                        let ours = crate::translate::services::Protocol::detect(
                            port.protocol.as_deref(),
                            port.name.as_deref(),
                        );
                        let theirs_proto = crate::translate::services::Protocol::detect(
                            Some(&theirs.protocol),
                            Some(&theirs.name),
                        );
                        if ours != theirs_proto {
                            conflicts.push(format!(
                                "port {} is {:?} here but {:?} in cluster {}",
                                port.number, ours, theirs_proto, other.cluster
                            ));
                        }
                    }
                }
            }
        }
        let conflict = if conflicts.is_empty() {
            Condition {
                type_: "Conflict",
                status: false,
                reason: "NoConflicts",
                message: "the service's ports agree with every other cluster exporting it".into(),
            }
        } else {
            Condition {
                type_: "Conflict",
                status: true,
                reason: "PortConflict",
                message: conflicts.join("; "),
            }
        };
        out.insert((ns.to_string(), name.to_string()), vec![valid, conflict]);
    }
    out
}

/// The ServiceImport (apply body without metadata) each service exported
/// by another cluster should have here, by `(namespace, name)`.
pub fn desired_imports(
    registry: &RegistrySnapshot,
    cluster_id: &str,
) -> BTreeMap<(String, String), Value> {
    let mut by_key: BTreeMap<&ServiceKey, (BTreeSet<&str>, BTreeMap<u16, Value>)> = BTreeMap::new();
    for (cluster, services) in &registry.services {
        if cluster == cluster_id || !registry.clusters.contains_key(cluster) {
            continue;
        }
        for (key, cs) in services {
            let entry = by_key.entry(key).or_default();
            entry.0.insert(cluster.as_str());
            for p in &cs.service.ports {
                entry.1.entry(p.port).or_insert_with(|| {
                    let mut port = json!({"port": p.port, "protocol": "TCP"});
                    if !p.name.is_empty() {
                        port["name"] = json!(p.name);
                    }
                    if let Some(app) = app_protocol(&p.protocol) {
                        port["appProtocol"] = json!(app);
                    }
                    port
                });
            }
        }
    }
    by_key
        .into_iter()
        .map(|(key, (clusters, ports))| {
            let body = json!({
                "clusters": clusters.into_iter().collect::<Vec<_>>().join(","),
                "spec": {
                    "type": "ClusterSetIP",
                    "ports": ports.into_values().collect::<Vec<_>>(),
                },
            });
            ((key.namespace.clone(), key.name.clone()), body)
        })
        .collect()
}

fn app_protocol(istio: &str) -> Option<&'static str> {
    match istio.to_ascii_uppercase().as_str() {
        "HTTP" => Some("http"),
        "HTTP2" => Some("kubernetes.io/h2c"),
        "GRPC" => Some("grpc"),
        "HTTPS" => Some("https"),
        "TLS" => Some("tls"),
        _ => None,
    }
}

/// Applies ServiceExport conditions and ServiceImports.
pub struct WriteBack {
    client: Client,
    config: WriteBackConfig,
    applied_exports: BTreeMap<(String, String), Vec<Condition>>,
    applied_imports: BTreeMap<(String, String), Value>,
    cleaned_up: bool,
}

impl WriteBack {
    pub fn new(client: Client, config: WriteBackConfig) -> Self {
        Self {
            client,
            config,
            applied_exports: BTreeMap::new(),
            applied_imports: BTreeMap::new(),
            cleaned_up: false,
        }
    }

    /// Runs until every input channel closes.
    pub async fn run(
        mut self,
        mut config: watch::Receiver<Arc<ConfigSnapshot>>,
        mut registry: watch::Receiver<Arc<RegistrySnapshot>>,
        mut namespaces: watch::Receiver<Arc<BTreeSet<String>>>,
    ) {
        loop {
            let c = config.borrow_and_update().clone();
            let r = registry.borrow_and_update().clone();
            let n = namespaces.borrow_and_update().clone();
            let complete = self.reconcile(&c, &r, &n).await;
            let retry = async {
                if complete {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(self.config.retry).await
                }
            };
            tokio::select! {
                res = config.changed() => if res.is_err() { return },
                res = registry.changed() => if res.is_err() { return },
                res = namespaces.changed() => if res.is_err() { return },
                _ = retry => {}
            }
            tokio::time::sleep(self.config.debounce).await;
        }
    }

    /// One pass; returns false when some write failed and must be retried.
    pub async fn reconcile(
        &mut self,
        config: &ConfigSnapshot,
        registry: &RegistrySnapshot,
        namespaces: &BTreeSet<String>,
    ) -> bool {
        let mut complete = true;
        let exports = export_conditions(config, registry, &self.config.cluster_id);
        self.applied_exports.retain(|k, _| exports.contains_key(k));
        for (key, conditions) in exports {
            if self.applied_exports.get(&key) == Some(&conditions) {
                continue;
            }
            match self.apply_export_status(&key, &conditions).await {
                Ok(()) => {
                    debug!(export = %format!("{}/{}", key.0, key.1), "ServiceExport conditions applied");
                    self.applied_exports.insert(key, conditions);
                }
                Err(e) => {
                    warn!(export = %format!("{}/{}", key.0, key.1), error = %e, "cannot write ServiceExport status (RBAC: patch serviceexports/status); retrying");
                    complete = false;
                }
            }
        }

        let desired: BTreeMap<_, _> = desired_imports(registry, &self.config.cluster_id)
            .into_iter()
            .filter(|((ns, _), _)| namespaces.contains(ns))
            .collect();
        if !self.cleaned_up {
            match self.list_managed_imports().await {
                Ok(existing) => {
                    for key in existing {
                        if !desired.contains_key(&key) {
                            self.applied_imports.insert(key, Value::Null);
                        }
                    }
                    self.cleaned_up = true;
                }
                Err(e) => {
                    warn!(error = %e, "cannot list ServiceImports (RBAC: list serviceimports); retrying");
                    complete = false;
                }
            }
        }
        let stale: Vec<(String, String)> = self
            .applied_imports
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            match self.delete_import(&key).await {
                Ok(()) => {
                    info!(import = %format!("{}/{}", key.0, key.1), "ServiceImport deleted: no other cluster exports the service any more");
                    self.applied_imports.remove(&key);
                }
                Err(e) => {
                    warn!(import = %format!("{}/{}", key.0, key.1), error = %e, "cannot delete ServiceImport; retrying");
                    complete = false;
                }
            }
        }
        for (key, body) in desired {
            if self.applied_imports.get(&key) == Some(&body) {
                continue;
            }
            match self.apply_import(&key, &body).await {
                Ok(()) => {
                    info!(import = %format!("{}/{}", key.0, key.1), "ServiceImport applied");
                    self.applied_imports.insert(key, body);
                }
                Err(e) => {
                    warn!(import = %format!("{}/{}", key.0, key.1), error = %e, "cannot apply ServiceImport (RBAC: patch serviceimports); retrying");
                    complete = false;
                }
            }
        }
        complete
    }

    async fn apply_export_status(
        &self,
        key: &(String, String),
        conditions: &[Condition],
    ) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.0,
            &mcs_resource("ServiceExport", "serviceexports"),
        );
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let conditions: Vec<Value> = conditions
            .iter()
            .map(|c| {
                json!({
                    "type": c.type_,
                    "status": if c.status { "True" } else { "False" },
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": now,
                })
            })
            .collect();
        let body = json!({
            "apiVersion": format!("{MCS_GROUP}/{MCS_VERSION}"),
            "kind": "ServiceExport",
            "metadata": {"name": key.1, "namespace": key.0},
            "status": {"conditions": conditions},
        });
        api.patch_status(
            &key.1,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
    }

    async fn apply_import(&self, key: &(String, String), body: &Value) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.0,
            &mcs_resource("ServiceImport", "serviceimports"),
        );
        let object = json!({
            "apiVersion": format!("{MCS_GROUP}/{MCS_VERSION}"),
            "kind": "ServiceImport",
            "metadata": {
                "name": key.1,
                "namespace": key.0,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                "annotations": {CLUSTERS_ANNOTATION: body["clusters"]},
            },
            "spec": body["spec"],
        });
        api.patch(
            &key.1,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map(|_| ())
    }

    async fn delete_import(&self, key: &(String, String)) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.0,
            &mcs_resource("ServiceImport", "serviceimports"),
        );
        match api.delete(&key.1, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_managed_imports(&self) -> Result<Vec<(String, String)>, kube::Error> {
        let api: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &mcs_resource("ServiceImport", "serviceimports"),
        );
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        match api.list(&lp).await {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .map(|o| {
                    (
                        o.metadata.namespace.unwrap_or_default(),
                        o.metadata.name.unwrap_or_default(),
                    )
                })
                .collect()),
            // The MCS CRDs are not installed: nothing to clean up.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}
