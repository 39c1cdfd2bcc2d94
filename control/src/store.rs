//! The configuration store: immutable snapshots of every resource, each
//! with where it came from, published through a `watch` channel. Sources
//! (the file watcher, later Kubernetes) own the only writer; the translator,
//! the admin server and `isthmus status` read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use crate::analyze::{Diagnostic, Severity};
use crate::config::{Kind, MeshConfigSpec, Object, Resource, ResourceKey};
use crate::source::Location;

/// One resource in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub resource: Arc<Resource>,
    /// Where the document starts.
    pub location: Location,
}

/// Everything the control plane currently believes, at one version.
#[derive(Debug, Clone, Default)]
pub struct ConfigSnapshot {
    version: u64,
    resources: BTreeMap<ResourceKey, StoredResource>,
    diagnostics: Vec<Diagnostic>,
}

macro_rules! typed_accessors {
    ($($fn_name:ident => $kind:ident, $spec:ty;)*) => {
        $(
            /// Every resource of this kind, ordered by namespace and name.
            pub fn $fn_name(&self) -> impl Iterator<Item = &Object<$spec>> + '_ {
                self.of_kind(Kind::$kind).filter_map(|r| match r.resource.as_ref() {
                    Resource::$kind(o) => Some(o),
                    _ => None,
                })
            }
        )*
    };
}

/// The documents' resources keyed as the store holds them, each with where
/// it was read; documents without a resource (errors, skipped kinds) are
/// left out.
pub fn stored_resources(
    docs: impl IntoIterator<Item = crate::source::ParsedDocument>,
) -> BTreeMap<ResourceKey, StoredResource> {
    docs.into_iter()
        .filter_map(|d| {
            let r = d.resource?;
            Some((
                r.key(),
                StoredResource {
                    resource: r,
                    location: d.location,
                },
            ))
        })
        .collect()
}

impl ConfigSnapshot {
    /// A snapshot at `version` holding `resources`; `diagnostics` are the
    /// current problems of the sources (rejected documents, duplicates, skips).
    pub fn new(
        version: u64,
        resources: BTreeMap<ResourceKey, StoredResource>,
        diagnostics: Vec<Diagnostic>,
    ) -> Self {
        Self {
            version,
            resources,
            diagnostics,
        }
    }

    /// One file's documents as a snapshot (version 1), as the file source
    /// would hold them; or, when any document has errors, every diagnostic
    /// of the file. For fixtures and one-off translations of a file.
    pub fn from_text(file: &Path, text: &str) -> Result<Self, Vec<Diagnostic>> {
        let docs = crate::source::parse_text(file, text);
        if docs.iter().any(|d| d.has_errors()) {
            return Err(docs.into_iter().flat_map(|d| d.diagnostics).collect());
        }
        Ok(Self::new(1, stored_resources(docs), Vec::new()))
    }

    /// Increases by one on every publish; 0 is the empty initial snapshot.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&StoredResource> {
        self.resources.get(key)
    }

    pub fn get_by(&self, kind: Kind, namespace: &str, name: &str) -> Option<&StoredResource> {
        self.resources.get(&ResourceKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &StoredResource)> + '_ {
        self.resources.iter()
    }

    /// All resources of `kind`, ordered by namespace and name.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &StoredResource> + '_ {
        let start = ResourceKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.resources
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v)
    }

    typed_accessors! {
        virtual_services => VirtualService, crate::config::VirtualServiceSpec;
        destination_rules => DestinationRule, crate::config::DestinationRuleSpec;
        gateways => Gateway, crate::config::GatewaySpec;
        service_entries => ServiceEntry, crate::config::ServiceEntrySpec;
        workload_entries => WorkloadEntry, crate::config::WorkloadEntrySpec;
        sidecars => Sidecar, crate::config::SidecarSpec;
        peer_authentications => PeerAuthentication, crate::config::PeerAuthenticationSpec;
        authorization_policies => AuthorizationPolicy, crate::config::AuthorizationPolicySpec;
        request_authentications => RequestAuthentication, crate::config::RequestAuthenticationSpec;
        service_exports => ServiceExport, crate::config::ServiceExportSpec;
        service_imports => ServiceImport, crate::config::ServiceImportSpec;
    }

    /// The cluster's MeshConfig (the first by namespace/name when several
    /// exist; the duplicates are reported as errors by the analyzer).
    pub fn mesh_config(&self) -> Option<&Object<MeshConfigSpec>> {
        self.of_kind(Kind::MeshConfig)
            .find_map(|r| match r.resource.as_ref() {
                Resource::MeshConfig(o) => Some(o),
                _ => None,
            })
    }

    /// Every current finding of the sources.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The current errors: documents rejected (their last good version, if
    /// any, is still in this snapshot) and conflicts. Empty when healthy.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> + '_ {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// The single writer of snapshots. Cloning a receiver is how readers
/// subscribe; the newest snapshot is always available without waiting.
#[derive(Debug)]
pub struct ConfigStore {
    tx: watch::Sender<Arc<ConfigSnapshot>>,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore {
    /// A store holding the empty snapshot at version 0.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(Arc::new(ConfigSnapshot::default()));
        Self { tx }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<ConfigSnapshot> {
        self.tx.borrow().clone()
    }

    /// Publishes a new snapshot at the next version and returns it. Works
    /// with or without subscribers.
    pub fn publish(
        &self,
        resources: BTreeMap<ResourceKey, StoredResource>,
        diagnostics: Vec<Diagnostic>,
    ) -> Arc<ConfigSnapshot> {
        let version = self.tx.borrow().version + 1;
        let snapshot = Arc::new(ConfigSnapshot::new(version, resources, diagnostics));
        self.tx.send_replace(snapshot.clone());
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_text;
    use std::path::Path;

    fn stored(text: &str) -> BTreeMap<ResourceKey, StoredResource> {
        stored_resources(parse_text(Path::new("mem.yaml"), text))
    }

    #[test]
    fn versions_increase_and_subscribers_see_the_newest() {
        let store = ConfigStore::new();
        let mut rx = store.subscribe();
        assert_eq!(rx.borrow().version(), 0);
        let text = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: reviews\n  namespace: shop\n";
        store.publish(stored(text), Vec::new());
        assert!(rx.has_changed().unwrap());
        let snap = rx.borrow_and_update().clone();
        assert_eq!(snap.version(), 1);
        assert_eq!(snap.service_exports().count(), 1);
        assert!(snap
            .get_by(Kind::ServiceExport, "shop", "reviews")
            .is_some());
        assert_eq!(snap.virtual_services().count(), 0);
        store.publish(BTreeMap::new(), Vec::new());
        assert_eq!(store.current().version(), 2);
        assert!(store.current().is_empty());
    }
}
