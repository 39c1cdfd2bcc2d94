//! The owner of everything the Kubernetes source has read: the objects of
//! every watched type, the indexes between them, and the resources derived
//! from them. Updates are applied incrementally: a changed Pod recomputes
//! only its WorkloadEntry, a changed Service only its ServiceEntry, a
//! changed EndpointSlice only the Pods it lists (before and after) and its
//! Service. A relist (`Init` .. `InitDone`) is buffered and applied as one
//! replacement, so a watcher that lost its place never publishes a partial
//! set and never drops the last good state while it catches up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::convert::{self, SliceEndpoints, SERVICE_NAME_LABEL};
use super::watch::{Ev, Obj, Update, Watched, CUSTOM_TYPES};
use crate::analyze::{Code, Diagnostic};
use crate::config::{Kind, Resource, ResourceKey};
use crate::store::StoredResource;

type Key = (String, String);

/// A custom resource that failed conversion or validation: what to tell
/// its owner (as a Kubernetes Event) and the operator.
#[derive(Debug, Clone)]
pub struct BadObject {
    pub source: Watched,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
struct CustomEntry {
    good: Option<StoredResource>,
    diagnostics: Vec<Diagnostic>,
    /// The resourceVersion last converted, so a relist that returns the
    /// same object does not convert (or report) it again.
    resource_version: Option<String>,
}

/// Everything one Kubernetes source knows. Owned by one task.
#[derive(Debug, Default)]
pub struct KubeState {
    services: BTreeMap<Key, Arc<Service>>,
    slices: BTreeMap<Key, Arc<EndpointSlice>>,
    pods: BTreeMap<Key, Arc<Pod>>,
    nodes: BTreeMap<String, Arc<Node>>,
    namespaces: BTreeMap<String, Arc<Namespace>>,
    custom: BTreeMap<ResourceKey, CustomEntry>,

    /// Ready endpoints per slice, and which slices list each Pod.
    slice_endpoints: BTreeMap<Key, SliceEndpoints>,
    pod_slices: BTreeMap<Key, BTreeSet<Key>>,

    /// ServiceEntries and WorkloadEntries derived from the core API.
    derived: BTreeMap<ResourceKey, StoredResource>,

    buffers: HashMap<Watched, Vec<Obj>>,
    synced: BTreeSet<Watched>,
    last_errors: BTreeMap<Watched, String>,
    dirty_services: BTreeSet<Key>,
    dirty_pods: BTreeSet<Key>,
    changed: bool,
    bad: Vec<BadObject>,
}

impl KubeState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one watcher update. Derived resources are recomputed by
    /// [`KubeState::flush`], once per batch.
    pub fn apply(&mut self, update: Update) {
        let source = update.source;
        match update.event {
            Ev::Init => {
                self.buffers.insert(source, Vec::new());
            }
            Ev::InitApply(obj) => self.buffers.entry(source).or_default().push(obj),
            Ev::InitDone => {
                let objects = self.buffers.remove(&source).unwrap_or_default();
                self.replace_all(source, objects);
                if self.synced.insert(source) {
                    tracing::debug!(%source, "initial list complete");
                }
                self.last_errors.remove(&source);
            }
            Ev::Apply(obj) => self.upsert(source, obj),
            Ev::Delete(obj) => {
                let key = obj.key();
                self.remove(source, &key);
            }
            Ev::Failed { not_found, message } => {
                // A type the API server does not serve is empty, not broken:
                // the control plane must not wait for CRDs that are optional.
                if not_found && source.optional() && !self.synced.contains(&source) {
                    tracing::info!(%source, "not served (CRD not installed) or not readable by this control plane; treating it as empty until that changes");
                    self.synced.insert(source);
                }
                self.last_errors.insert(source, message);
            }
        }
    }

    /// Has every watcher completed its first list?
    pub fn synced(&self) -> bool {
        Watched::all().iter().all(|w| self.synced.contains(w))
    }

    /// The types still waiting for their first list, with their last error.
    pub fn unsynced(&self) -> Vec<(Watched, Option<String>)> {
        Watched::all()
            .into_iter()
            .filter(|w| !self.synced.contains(w))
            .map(|w| (w, self.last_errors.get(&w).cloned()))
            .collect()
    }

    pub fn namespaces(&self) -> BTreeSet<String> {
        self.namespaces.keys().cloned().collect()
    }

    /// Bad objects found since the last call.
    pub fn take_bad_objects(&mut self) -> Vec<BadObject> {
        std::mem::take(&mut self.bad)
    }

    /// Recomputes what the batch made dirty; returns whether the resources
    /// or findings changed since the last flush.
    pub fn flush(&mut self) -> bool {
        for key in std::mem::take(&mut self.dirty_services) {
            // A Service's ports name its Pods' ports (the unnamed-port rule).
            let pods: Vec<Key> = self
                .slices_of_service(&key.0, &key.1)
                .flat_map(|(_, eps)| eps.by_pod.keys().map(|p| (key.0.clone(), p.clone())))
                .collect();
            self.dirty_pods.extend(pods);
            self.recompute_service(&key);
        }
        for key in std::mem::take(&mut self.dirty_pods) {
            self.recompute_pod(&key);
        }
        std::mem::take(&mut self.changed)
    }

    /// The source's resources and findings. Custom resources win over a
    /// derived one of the same kind, namespace and name (a ServiceEntry
    /// named like a Service), which is reported.
    pub fn layer(&self) -> (BTreeMap<ResourceKey, StoredResource>, Vec<Diagnostic>) {
        let mut resources = BTreeMap::new();
        let mut diagnostics = Vec::new();
        // Credentials only where a Gateway may use them (credentialName
        // names a Secret of the Gateway's namespace).
        let gateway_namespaces: BTreeSet<&str> = self
            .custom
            .iter()
            .filter(|(k, e)| k.kind == Kind::Gateway && e.good.is_some())
            .map(|(k, _)| k.namespace.as_str())
            .collect();
        for (key, entry) in &self.custom {
            if key.kind == Kind::Secret && !gateway_namespaces.contains(key.namespace.as_str()) {
                continue;
            }
            diagnostics.extend(entry.diagnostics.iter().cloned());
            if let Some(good) = &entry.good {
                resources.insert(key.clone(), good.clone());
            }
        }
        for (key, stored) in &self.derived {
            if resources.contains_key(key) {
                diagnostics.push(Diagnostic::new(
                    Code::DuplicateResource,
                    stored.location.clone(),
                    Some(key.to_string()),
                    format!("{key} derived from the Kubernetes API is shadowed by the custom resource of the same name; rename one of them"),
                ));
                continue;
            }
            resources.insert(key.clone(), stored.clone());
        }
        (resources, diagnostics)
    }

    fn replace_all(&mut self, source: Watched, objects: Vec<Obj>) {
        let listed: BTreeSet<Key> = objects.iter().map(Obj::key).collect();
        for key in self.keys_of(source) {
            if !listed.contains(&key) {
                self.remove(source, &key);
            }
        }
        for obj in objects {
            self.upsert(source, obj);
        }
    }

    fn keys_of(&self, source: Watched) -> Vec<Key> {
        match source {
            Watched::Service => self.services.keys().cloned().collect(),
            Watched::EndpointSlice => self.slices.keys().cloned().collect(),
            Watched::Pod => self.pods.keys().cloned().collect(),
            Watched::Node => self
                .nodes
                .keys()
                .map(|n| (String::new(), n.clone()))
                .collect(),
            Watched::Namespace => self
                .namespaces
                .keys()
                .map(|n| (String::new(), n.clone()))
                .collect(),
            Watched::Custom(i) => {
                let kind = CUSTOM_TYPES.get(i).map(|t| t.kind);
                self.custom
                    .keys()
                    .filter(|k| Some(k.kind) == kind)
                    .map(|k| (k.namespace.clone(), k.name.clone()))
                    .collect()
            }
        }
    }

    fn upsert(&mut self, source: Watched, obj: Obj) {
        let key = obj.key();
        match obj {
            Obj::Service(svc) => {
                let same = self.services.get(&key).is_some_and(|old| {
                    old.metadata.resource_version == svc.metadata.resource_version
                });
                if !same {
                    self.services.insert(key.clone(), svc);
                    self.dirty_services.insert(key);
                }
            }
            Obj::Slice(slice) => {
                if self.slices.get(&key).is_some_and(|old| {
                    old.metadata.resource_version == slice.metadata.resource_version
                }) {
                    return;
                }
                let endpoints = convert::slice_endpoints(&slice);
                let service = service_of(&slice);
                self.slices.insert(key.clone(), slice);
                self.set_slice_endpoints(&key, service, endpoints);
            }
            Obj::Pod(pod) => {
                let same = self.pods.get(&key).is_some_and(|old| {
                    old.metadata.resource_version == pod.metadata.resource_version
                });
                if !same {
                    self.pods.insert(key.clone(), pod);
                    self.dirty_pods.insert(key);
                }
            }
            Obj::Node(node) => {
                let name = key.1;
                let before = self
                    .nodes
                    .get(&name)
                    .and_then(|n| convert::node_locality(n));
                let after = convert::node_locality(&node);
                self.nodes.insert(name.clone(), node);
                if before != after {
                    self.mark_pods_on_node(&name);
                }
            }
            Obj::Namespace(ns) => {
                if !self.namespaces.contains_key(&key.1) {
                    self.changed = true;
                }
                self.namespaces.insert(key.1, ns);
            }
            Obj::Custom(obj) => {
                let Watched::Custom(i) = source else { return };
                let Some(t) = CUSTOM_TYPES.get(i) else { return };
                if t.kind == Kind::Secret && !super::watch::is_credential_secret(&obj) {
                    // Not a credential (or no longer one): not our business.
                    self.remove(source, &key);
                    return;
                }
                let rkey = convert::derived_key(t.kind, &key.0, &key.1);
                let rv = obj.metadata.resource_version.clone();
                let entry = self.custom.entry(rkey.clone()).or_default();
                if rv.is_some() && entry.resource_version == rv {
                    return;
                }
                entry.resource_version = rv.clone();
                let location = convert::location(t.plural, &key.0, &key.1);
                match convert::custom_resource(&obj, &t.api_version(), t.kind.name(), t.plural) {
                    Ok(resource) => {
                        let stored = StoredResource {
                            resource: Arc::new(resource),
                            location,
                        };
                        if entry.good.as_ref() != Some(&stored) || !entry.diagnostics.is_empty() {
                            entry.good = Some(stored);
                            entry.diagnostics.clear();
                            self.changed = true;
                        }
                    }
                    Err(diagnostics) => {
                        let message = diagnostics
                            .iter()
                            .map(|d| d.message.clone())
                            .collect::<Vec<_>>()
                            .join("; ");
                        let kept = if entry.good.is_some() {
                            "its last good version stays in force"
                        } else {
                            "it has no effect"
                        };
                        tracing::warn!(resource = %rkey, %message, "invalid object skipped; {kept}");
                        entry.diagnostics = diagnostics
                            .into_iter()
                            .map(|mut d| {
                                d.message = format!("{} ({kept})", d.message);
                                d
                            })
                            .collect();
                        self.changed = true;
                        self.bad.push(BadObject {
                            source,
                            namespace: key.0,
                            name: key.1,
                            uid: obj.metadata.uid.clone(),
                            resource_version: rv,
                            message: format!("Isthmus cannot use this object: {message}; {kept}"),
                        });
                    }
                }
            }
        }
    }

    fn remove(&mut self, source: Watched, key: &Key) {
        match source {
            Watched::Service => {
                if self.services.remove(key).is_some() {
                    self.dirty_services.insert(key.clone());
                }
            }
            Watched::EndpointSlice => {
                if let Some(slice) = self.slices.remove(key) {
                    self.set_slice_endpoints(key, service_of(&slice), SliceEndpoints::default());
                    self.slice_endpoints.remove(key);
                }
            }
            Watched::Pod => {
                if self.pods.remove(key).is_some() {
                    self.dirty_pods.insert(key.clone());
                }
            }
            Watched::Node => {
                if self.nodes.remove(&key.1).is_some() {
                    self.mark_pods_on_node(&key.1);
                }
            }
            Watched::Namespace => {
                if self.namespaces.remove(&key.1).is_some() {
                    self.changed = true;
                }
            }
            Watched::Custom(i) => {
                let Some(t) = CUSTOM_TYPES.get(i) else { return };
                let rkey = convert::derived_key(t.kind, &key.0, &key.1);
                if self.custom.remove(&rkey).is_some() {
                    self.changed = true;
                }
            }
        }
    }

    fn set_slice_endpoints(&mut self, key: &Key, service: Option<String>, new: SliceEndpoints) {
        let old = self.slice_endpoints.get(key).cloned().unwrap_or_default();
        if old == new && self.slice_endpoints.contains_key(key) {
            return;
        }
        let ns = &key.0;
        for pod in old.by_pod.keys() {
            let pod_key = (ns.clone(), pod.clone());
            if let Some(set) = self.pod_slices.get_mut(&pod_key) {
                set.remove(key);
                if set.is_empty() {
                    self.pod_slices.remove(&pod_key);
                }
            }
            self.dirty_pods.insert(pod_key);
        }
        for pod in new.by_pod.keys() {
            let pod_key = (ns.clone(), pod.clone());
            self.pod_slices
                .entry(pod_key.clone())
                .or_default()
                .insert(key.clone());
            self.dirty_pods.insert(pod_key);
        }
        if old.inline != new.inline {
            if let Some(service) = service {
                self.dirty_services.insert((ns.clone(), service));
            }
        }
        self.slice_endpoints.insert(key.clone(), new);
    }

    fn mark_pods_on_node(&mut self, node: &str) {
        for pod_key in self.pod_slices.keys() {
            let on_node = self
                .pods
                .get(pod_key)
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.node_name.as_deref())
                == Some(node);
            if on_node {
                self.dirty_pods.insert(pod_key.clone());
            }
        }
    }

    fn set_derived(&mut self, key: ResourceKey, value: Option<StoredResource>) {
        match value {
            Some(v) => {
                if self.derived.get(&key) != Some(&v) {
                    self.derived.insert(key, v);
                    self.changed = true;
                }
            }
            None => {
                if self.derived.remove(&key).is_some() {
                    self.changed = true;
                }
            }
        }
    }

    fn recompute_service(&mut self, key: &Key) {
        let rkey = convert::derived_key(Kind::ServiceEntry, &key.0, &key.1);
        let value = self.services.get(key).and_then(|svc| {
            let inline: Vec<convert::InlineEndpoint> = self
                .slices_of_service(&key.0, &key.1)
                .flat_map(|(_, eps)| eps.inline.iter().cloned())
                .collect();
            match convert::service_entry(svc, &inline) {
                Ok(se) => Some(StoredResource {
                    resource: Arc::new(Resource::ServiceEntry(se)),
                    location: convert::location("services", &key.0, &key.1),
                }),
                Err(why) => {
                    tracing::debug!(service = %format!("{}/{}", key.0, key.1), ?why, "service not in the mesh");
                    None
                }
            }
        });
        self.set_derived(rkey, value);
    }

    fn slices_of_service<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = (&'a Key, &'a SliceEndpoints)> + 'a {
        let start = (namespace.to_string(), String::new());
        self.slice_endpoints
            .range(start..)
            .take_while(move |(k, _)| k.0 == namespace)
            .filter(move |(k, _)| {
                self.slices
                    .get(*k)
                    .and_then(|s| service_of(s))
                    .is_some_and(|s| s == service)
            })
    }

    /// The number of the Service's single unnamed port, if it has one
    /// (EndpointSlices name that port "").
    fn unnamed_port(&self, namespace: &str, service: Option<String>) -> Option<i32> {
        let svc = self.services.get(&(namespace.to_string(), service?))?;
        let ports = svc.spec.as_ref()?.ports.as_ref()?;
        match ports.as_slice() {
            [only] if only.name.as_deref().unwrap_or("").is_empty() => Some(only.port),
            _ => None,
        }
    }

    fn recompute_pod(&mut self, key: &Key) {
        let rkey = convert::derived_key(Kind::WorkloadEntry, &key.0, &key.1);
        let value = (|| {
            let pod = self.pods.get(key)?;
            let slices = self.pod_slices.get(key)?;
            let endpoints: Vec<(Option<i32>, &convert::PodEndpoint)> = slices
                .iter()
                .filter_map(|slice_key| {
                    let ep = self.slice_endpoints.get(slice_key)?.by_pod.get(&key.1)?;
                    let service = self.slices.get(slice_key).and_then(|s| service_of(s));
                    Some((self.unnamed_port(&key.0, service), ep))
                })
                .collect();
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|n| self.nodes.get(n))
                .map(Arc::as_ref);
            let we = convert::workload_entry(pod, &endpoints, node)?;
            Some(StoredResource {
                resource: Arc::new(Resource::WorkloadEntry(we)),
                location: convert::location("pods", &key.0, &key.1),
            })
        })();
        self.set_derived(rkey, value);
    }
}

fn service_of(slice: &EndpointSlice) -> Option<String> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .cloned()
}

#[cfg(test)]
mod tests;
