//! Publishing this cluster into the registry: its `ClusterInfo`, the diff of
//! its exported services whenever the local configuration changes, and its
//! lease. The only writer of this cluster's registry entries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::model::{
    ClusterInfo, ClusterService, Endpoint, ExportedService, ServiceKey, ServicePort,
};
use isthmus_federation::{Handle, PublishDiff, RegistrySnapshot};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::ConfigSnapshot;
use crate::translate::{LocalSettings, ServiceIndex};

/// This cluster's exported services as the registry stores them.
pub fn exported_services(
    config: &ConfigSnapshot,
    local: &LocalSettings,
) -> BTreeMap<ServiceKey, ClusterService> {
    let index = ServiceIndex::build(config, &RegistrySnapshot::default(), local);
    index
        .iter()
        .filter(|s| s.exported)
        .filter_map(|s| {
            let key = s.key.clone()?;
            let service = ExportedService {
                key: key.clone(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: p.port,
                        protocol: format!("{:?}", p.protocol).to_ascii_uppercase(),
                        target_port: p.target_port,
                    })
                    .collect(),
                labels: BTreeMap::new(),
            };
            let endpoints = s
                .local
                .iter()
                .map(|i| Endpoint {
                    address: i.address.clone(),
                    ports: s
                        .ports
                        .iter()
                        .map(|p| (p.name.clone(), i.port_for(p)))
                        .collect(),
                    labels: i.labels.clone(),
                    service_account: i.service_account.clone(),
                    locality: i.locality.clone(),
                    weight: i.weight,
                    health: i.health,
                })
                .collect();
            Some((
                key,
                ClusterService {
                    cluster: local.cluster_id.clone(),
                    service,
                    endpoints,
                },
            ))
        })
        .collect()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What changed between two exported sets.
pub fn diff(
    before: &BTreeMap<ServiceKey, ClusterService>,
    after: &BTreeMap<ServiceKey, ClusterService>,
) -> PublishDiff {
    PublishDiff {
        upserts: after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(_, v)| v.clone())
            .collect(),
        removals: before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .cloned()
            .collect(),
    }
}

/// Registers this cluster, keeps its lease, and keeps the registry in line with the local configuration until the
/// config channel closes. The first round publishes against what the
/// registry already holds for this cluster (after a restart, usually
/// nothing changed), so nothing is lost or written twice.
pub async fn run_exporter(
    handle: Handle,
    info: ClusterInfo,
    mut config: watch::Receiver<Arc<ConfigSnapshot>>,
    local: LocalSettings,
    lease_renew: Duration,
) {
    let retry = Duration::from_millis(500);
    // Registering is idempotent; retry until a quorum accepts it.
    while let Err(e) = handle.register_cluster(info.clone()).await {
        warn!(error = %e, "cannot register this cluster in the federation registry yet; retrying");
        tokio::time::sleep(retry).await;
    }
    info!(cluster = %info.id, "registered in the federation registry");
    // Renewing only once registered: the registry refuses leases of
    // clusters it does not know. Aborted when this task ends.
    let lease = handle.spawn_lease_renewer(info.id.clone(), lease_renew);
    let _lease = AbortOnDrop(lease);
    let mut published: Option<BTreeMap<ServiceKey, ClusterService>> = None;
    loop {
        let snapshot = config.borrow_and_update().clone();
        let wanted = exported_services(&snapshot, &local);
        let before = match &published {
            Some(p) => p.clone(),
            None => handle
                .snapshot_stale()
                .services
                .get(&info.id)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        };
        let d = diff(&before, &wanted);
        if d.is_empty() {
            published = Some(wanted);
        } else {
            match handle.publish(&info.id, d.clone()).await {
                Ok(rev) => {
                    info!(
                        revision = rev,
                        upserts = d.upserts.len(),
                        removals = d.removals.len(),
                        "published exported services"
                    );
                    published = Some(wanted);
                }
                Err(e) => {
                    warn!(error = %e, "publishing exported services failed; will retry");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            }
        }
        if config.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_text;
    use crate::store::{ConfigStore, StoredResource};
    use std::path::Path;

    const CONFIG: &str = r#"
apiVersion: isthmus.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec: {clusterId: east, network: n1}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: private, namespace: default}
spec:
  hosts: [private.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: private}}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: reviews, namespace: default}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 10.0.0.1, serviceAccount: reviews, labels: {app: reviews, version: v1}}
"#;

    fn snapshot(text: &str) -> Arc<ConfigSnapshot> {
        let store = ConfigStore::new();
        let resources = parse_text(Path::new("mem.yaml"), text)
            .into_iter()
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
            .collect();
        store.publish(resources, Vec::new())
    }

    #[test]
    fn only_exported_services_with_their_local_endpoints() {
        let snap = snapshot(CONFIG);
        let local = LocalSettings::from_config(&snap, Vec::new());
        let out = exported_services(&snap, &local);
        assert_eq!(out.len(), 1, "{out:?}");
        let cs = out.values().next().unwrap();
        assert_eq!(cs.cluster, "east");
        assert_eq!(cs.service.key.name, "reviews");
        assert_eq!(cs.service.ports[0].port, 9080);
        assert_eq!(cs.endpoints.len(), 1);
        assert_eq!(cs.endpoints[0].address, "10.0.0.1");
        assert_eq!(cs.endpoints[0].ports.get("http"), Some(&9080));
        assert_eq!(
            cs.endpoints[0].labels.get("version").map(String::as_str),
            Some("v1")
        );
    }

    #[test]
    fn diff_carries_changes_and_removals_only() {
        let snap = snapshot(CONFIG);
        let local = LocalSettings::from_config(&snap, Vec::new());
        let a = exported_services(&snap, &local);
        assert!(diff(&a, &a).is_empty());
        let d = diff(&BTreeMap::new(), &a);
        assert_eq!(d.upserts.len(), 1);
        let d = diff(&a, &BTreeMap::new());
        assert_eq!(d.removals.len(), 1);
        assert!(d.upserts.is_empty());
    }
}
