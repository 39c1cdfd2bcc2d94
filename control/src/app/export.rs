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
                        // A port without a declared protocol is published
                        // without one, so other clusters sniff it as this one
                        // does (TCP would turn its HTTP into opaque bytes).
                        protocol: if p.sniffed {
                            String::new()
                        } else {
                            format!("{:?}", p.protocol).to_ascii_uppercase()
                        },
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
    use crate::store::ConfigStore;
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
        let resources = crate::store::stored_resources(parse_text(Path::new("mem.yaml"), text));
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

    /// A port without a protocol crosses the federation undeclared, so a
    /// cluster that only knows the service from the registry sniffs it as
    /// the exporting cluster does (it used to arrive as `TCP`).
    #[test]
    fn unnamed_ports_stay_sniffed_in_other_clusters() {
        use crate::translate::generator::generate;
        use crate::translate::listener::sniff::HTTP_INSPECTOR;
        use crate::translate::{Inputs, ProxyFlavor};
        use envoy_types::pb::envoy::config::core::v3::Node;
        use envoy_types::pb::envoy::config::listener::v3::Listener;
        use isthmus_federation::model::Locality;
        use isthmus_xds::{Names, Proxy, TypeUrl};
        use prost::Message;

        let east = snapshot(&format!(
            "{CONFIG}---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: legacy, namespace: default}}
spec:
  hosts: [legacy.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 7070}}, {{number: 7071, name: tcp-db}}]
  workloadSelector: {{labels: {{app: legacy}}}}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {{name: legacy, namespace: default}}
"
        ));
        let exported = exported_services(&east, &LocalSettings::from_config(&east, Vec::new()));
        let key = ServiceKey {
            namespace: "default".into(),
            name: "legacy".into(),
        };
        let protocols: Vec<(u16, &str)> = exported[&key]
            .service
            .ports
            .iter()
            .map(|p| (p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(protocols, vec![(7070, ""), (7071, "TCP")]);

        // The west cluster knows `legacy` only from the registry.
        let mut registry = RegistrySnapshot::default();
        registry.clusters.insert(
            "east".into(),
            ClusterInfo {
                id: "east".into(),
                network: "n1".into(),
                locality: Locality::default(),
                eastwest_tcp: vec!["192.0.2.1:15443".into()],
                eastwest_quic: Vec::new(),
                ingress: Vec::new(),
                intermediate_pem: String::new(),
                roots_pem: Vec::new(),
            },
        );
        registry
            .services
            .insert("east".into(), exported.into_iter().collect());
        let west = LocalSettings {
            cluster_id: "west".into(),
            network: "n2".into(),
            ..LocalSettings::default()
        };
        let inputs = Inputs::new(snapshot(""), Arc::new(registry), west);
        let svc = inputs
            .services
            .get("legacy.default.svc.cluster.local")
            .expect("remote-only service indexed");
        assert!(svc.local.is_empty() && svc.remote.len() == 1);
        let sniffed: Vec<(u16, bool)> = svc.ports.iter().map(|p| (p.port, p.sniffed)).collect();
        assert_eq!(sniffed, vec![(7070, true), (7071, false)]);

        let node = Node {
            id: "sidecar~10.9.0.1~client-1.default~default.svc.cluster.local".into(),
            ..Default::default()
        };
        let proxy = Proxy::from_node(Some(&node)).expect("valid node");
        let listeners: Vec<Listener> = generate(
            &inputs,
            &proxy,
            ProxyFlavor::Envoy,
            TypeUrl::Listener,
            &Names::All,
        )
        .into_iter()
        .map(|r| Listener::decode(r.body.value.as_slice()).expect("listener"))
        .collect();
        let inspects = |port: &str| {
            let l = listeners
                .iter()
                .find(|l| l.name.ends_with(&format!("_{port}")))
                .unwrap_or_else(|| panic!("no outbound listener for {port}"));
            let http = l.listener_filters.iter().any(|f| f.name == HTTP_INSPECTOR);
            (http, l.filter_chains.len())
        };
        assert_eq!(inspects("7070"), (true, 2), "HTTP and TCP behind sniffing");
        assert_eq!(inspects("7071"), (false, 1), "declared TCP stays TCP");
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
