//! The service index: local services (ServiceEntry + WorkloadEntry) merged
//! with every other cluster's exports from the registry, keyed by hostname.
//! Built once per input change; every proxy's translation reads it.

use std::collections::BTreeMap;

use isthmus_federation::model::{Health, Locality, ServiceKey};
use isthmus_federation::RegistrySnapshot;

use crate::config::host::{resolve_fqdn, service_fqdn, CLUSTER_DOMAIN};
use crate::config::{labels_match, Location, Resolution, WorkloadEntrySpec};
use crate::store::ConfigSnapshot;

use super::LocalSettings;

/// Istio's protocol of a service port, which picks TCP or HTTP handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
}

impl Protocol {
    /// From the explicit protocol, else the port name's `proto-` prefix
    /// (Istio's convention), else TCP.
    pub fn detect(protocol: Option<&str>, name: Option<&str>) -> Protocol {
        let word = match protocol {
            Some(p) if !p.is_empty() => p.to_string(),
            _ => name
                .map(|n| n.split('-').next().unwrap_or(n).to_string())
                .unwrap_or_default(),
        };
        match word.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" | "GRPC-WEB" => Protocol::Grpc,
            "HTTPS" => Protocol::Https,
            "TLS" => Protocol::Tls,
            _ => Protocol::Tcp,
        }
    }

    /// Handled by the HTTP connection manager (routes, retries, faults).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Needs HTTP/2 towards the upstream.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
    /// No protocol declared (unnamed port, no `appProtocol`): outbound
    /// listeners sniff HTTP and fall back to TCP (`listener::sniff`).
    pub sniffed: bool,
}

/// One endpoint of a service, local or remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub address: String,
    /// Workload port per service port name.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub locality: Locality,
    pub network: String,
    pub weight: u32,
    pub health: Health,
}

impl Instance {
    /// The workload port serving `port`: named in the instance, else the
    /// service's target port.
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports
            .get(&port.name)
            .copied()
            .unwrap_or(port.target_port)
    }
}

/// What one other cluster publishes about a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInstances {
    pub cluster: String,
    pub network: String,
    pub locality: Locality,
    /// East-west gateway `host:port` addresses (mTLS passthrough).
    pub eastwest: Vec<String>,
    /// The same gateways' QUIC tunnel addresses (UDP), when published.
    pub eastwest_quic: Vec<String>,
    /// The ports as that cluster declares them (port names may differ).
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Instance>,
}

impl RemoteInstances {
    /// The remote cluster's port with the same number as `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// Who may see a config object or service (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Namespaces(Vec<String>),
}

impl Visibility {
    /// Istio's `exportTo` list written in `owner_namespace`.
    pub fn from_export_to(export_to: &[String], owner_namespace: &str) -> Visibility {
        if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
            return Visibility::Public;
        }
        Visibility::Namespaces(
            export_to
                .iter()
                .map(|e| {
                    if e == "." {
                        owner_namespace.to_string()
                    } else {
                        e.clone()
                    }
                })
                .filter(|e| e != "~")
                .collect(),
        )
    }

    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Visibility::Public => true,
            Visibility::Namespaces(list) => list.iter().any(|n| n == namespace),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The FQDN clients use; clusters are named after it.
    pub hostname: String,
    /// Namespace of the resource that declared it (or of the registry key).
    pub namespace: String,
    /// The federation key when the hostname is `name.ns.svc.cluster.local`.
    pub key: Option<ServiceKey>,
    pub ports: Vec<ServicePort>,
    pub location: Location,
    pub resolution: Resolution,
    pub visibility: Visibility,
    /// Labels of the workloads behind it (ServiceEntry workloadSelector).
    pub selector: Option<BTreeMap<String, String>>,
    /// Endpoints in this cluster (from the local config).
    pub local: Vec<Instance>,
    /// Endpoints in other clusters (from the registry), by cluster id.
    pub remote: Vec<RemoteInstances>,
    /// This cluster exports it (ServiceExport or `exportAll`).
    pub exported: bool,
    /// ServiceEntry `subjectAltNames`: identities to expect besides the
    /// endpoints' service accounts.
    pub subject_alt_names: Vec<String>,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// Part of the mesh: its endpoints run Isthmus sidecars and speak mTLS.
    pub fn is_mesh_internal(&self) -> bool {
        self.location == Location::MeshInternal
    }
}

/// Every service this control plane knows, by hostname.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceIndex {
    pub services: BTreeMap<String, Service>,
}

impl ServiceIndex {
    pub fn get(&self, hostname: &str) -> Option<&Service> {
        self.services.get(hostname)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Service> + '_ {
        self.services.values()
    }

    /// Builds the index. Problems in individual resources are logged and
    /// the resource is skipped, so one bad entry never hides the others.
    pub fn build(
        config: &ConfigSnapshot,
        registry: &RegistrySnapshot,
        local: &LocalSettings,
    ) -> ServiceIndex {
        let mut services = BTreeMap::new();
        let export_all = config.mesh_config().is_some_and(|m| m.spec.export_all());
        for se in config.service_entries() {
            let ns = se.namespace();
            let spec = &se.spec;
            let ports: Vec<ServicePort> = spec
                .ports
                .iter()
                .filter_map(|p| {
                    let port = u16::try_from(p.number).ok()?;
                    let target_port = p
                        .target_port
                        .and_then(|t| u16::try_from(t).ok())
                        .unwrap_or(port);
                    Some(ServicePort {
                        name: p.name.clone().unwrap_or_else(|| port.to_string()),
                        port,
                        protocol: Protocol::detect(p.protocol.as_deref(), p.name.as_deref()),
                        target_port,
                        sniffed: super::listener::sniff::is_sniffed(
                            p.protocol.as_deref(),
                            p.name.as_deref(),
                        ),
                    })
                })
                .collect();
            let selector = spec.workload_selector.as_ref().map(|s| s.labels.clone());
            let mut instances: Vec<Instance> = spec
                .endpoints
                .iter()
                .filter_map(|we| instance_from_entry(we, local))
                .collect();
            if let Some(selector) = &selector {
                for we in config.workload_entries().filter(|we| we.namespace() == ns) {
                    if labels_match(selector, &we.spec.labels) {
                        match instance_from_entry(&we.spec, local) {
                            Some(i) => instances.push(i),
                            None => tracing::warn!(
                                workload_entry = %format!("{}/{}", ns, we.name()),
                                "WorkloadEntry has no address; it is not an endpoint of ServiceEntry {}/{}",
                                ns,
                                se.name()
                            ),
                        }
                    }
                }
            }
            for host in &spec.hosts {
                let hostname = resolve_fqdn(host, ns);
                let key = mesh_key(&hostname);
                let exported = spec.location() == Location::MeshInternal
                    && key.as_ref().is_some_and(|k| {
                        export_all
                            || config
                                .get_by(crate::config::Kind::ServiceExport, &k.namespace, &k.name)
                                .is_some()
                    });
                services.insert(
                    hostname.clone(),
                    Service {
                        hostname,
                        namespace: ns.to_string(),
                        key,
                        ports: ports.clone(),
                        location: spec.location(),
                        resolution: spec.resolution(),
                        visibility: Visibility::from_export_to(&spec.export_to, ns),
                        selector: selector.clone(),
                        local: instances.clone(),
                        remote: Vec::new(),
                        exported,
                        subject_alt_names: spec.subject_alt_names.clone(),
                    },
                );
            }
        }
        for (cluster_id, published) in &registry.services {
            // The local cluster's own entries come from the local config, so a
            // registry outage never hides local endpoints.
            if *cluster_id == local.cluster_id {
                continue;
            }
            let Some(info) = registry.clusters.get(cluster_id) else {
                tracing::warn!(cluster = %cluster_id, "registry has services of a cluster it has no ClusterInfo for; ignoring them");
                continue;
            };
            for (key, cs) in published {
                let hostname = service_fqdn(&key.name, &key.namespace);
                let ports: Vec<ServicePort> = cs
                    .service
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: p.port,
                        protocol: Protocol::detect(Some(&p.protocol), Some(&p.name)),
                        target_port: if p.target_port == 0 {
                            p.port
                        } else {
                            p.target_port
                        },
                        sniffed: super::listener::sniff::is_sniffed(
                            Some(&p.protocol),
                            Some(&p.name),
                        ),
                    })
                    .collect();
                let svc = services.entry(hostname.clone()).or_insert_with(|| Service {
                    hostname: hostname.clone(),
                    namespace: key.namespace.clone(),
                    key: Some(key.clone()),
                    ports: Vec::new(),
                    location: Location::MeshInternal,
                    resolution: Resolution::Static,
                    visibility: Visibility::Public,
                    selector: None,
                    local: Vec::new(),
                    remote: Vec::new(),
                    exported: false,
                    subject_alt_names: Vec::new(),
                });
                for p in &ports {
                    if svc.port(p.port).is_none() {
                        svc.ports.push(p.clone());
                    }
                }
                let endpoints = cs
                    .endpoints
                    .iter()
                    .map(|e| Instance {
                        address: e.address.clone(),
                        ports: e.ports.clone(),
                        labels: e.labels.clone(),
                        service_account: e.service_account.clone(),
                        locality: if e.locality == Locality::default() {
                            info.locality.clone()
                        } else {
                            e.locality.clone()
                        },
                        network: info.network.clone(),
                        weight: e.weight.max(1),
                        health: e.health,
                    })
                    .collect();
                svc.remote.push(RemoteInstances {
                    cluster: cluster_id.clone(),
                    network: info.network.clone(),
                    locality: info.locality.clone(),
                    eastwest: info.eastwest_tcp.clone(),
                    eastwest_quic: info.eastwest_quic.clone(),
                    ports,
                    endpoints,
                });
            }
        }
        ServiceIndex { services }
    }
}

/// `name.ns.svc.cluster.local` → the federation key.
pub fn mesh_key(hostname: &str) -> Option<ServiceKey> {
    let base = hostname.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
    let (name, namespace) = base.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some(ServiceKey {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// Istio's `region/zone/subzone` string.
pub fn parse_locality(text: &str) -> Locality {
    let mut parts = text.splitn(3, '/');
    Locality {
        region: parts.next().unwrap_or("").to_string(),
        zone: parts.next().unwrap_or("").to_string(),
        subzone: parts.next().unwrap_or("").to_string(),
    }
}

fn instance_from_entry(we: &WorkloadEntrySpec, local: &LocalSettings) -> Option<Instance> {
    let address = we.address.clone().filter(|a| !a.is_empty())?;
    let locality = match we.locality.as_deref() {
        Some(l) if !l.is_empty() => parse_locality(l),
        _ => local.locality.clone(),
    };
    Some(Instance {
        address,
        ports: we
            .ports
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), u16::try_from(*p).ok()?)))
            .collect(),
        labels: we.labels.clone(),
        service_account: we
            .service_account
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        locality,
        network: we.network.clone().unwrap_or_else(|| local.network.clone()),
        weight: we.weight.unwrap_or(1).max(1),
        health: Health::Healthy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_from_field_or_name() {
        assert_eq!(Protocol::detect(Some("HTTP"), None), Protocol::Http);
        assert_eq!(
            Protocol::detect(Some("grpc"), Some("tcp-x")),
            Protocol::Grpc
        );
        assert_eq!(Protocol::detect(None, Some("http2-api")), Protocol::Http2);
        assert_eq!(Protocol::detect(None, Some("mongo")), Protocol::Tcp);
        assert_eq!(Protocol::detect(None, None), Protocol::Tcp);
    }

    #[test]
    fn mesh_keys_only_for_service_hostnames() {
        assert_eq!(
            mesh_key("reviews.shop.svc.cluster.local"),
            Some(ServiceKey {
                namespace: "shop".into(),
                name: "reviews".into()
            })
        );
        assert_eq!(mesh_key("api.example.com"), None);
        assert_eq!(mesh_key("a.b.c.svc.cluster.local"), None);
    }

    #[test]
    fn visibility_rules() {
        assert!(Visibility::from_export_to(&[], "a").allows("b"));
        let dot = Visibility::from_export_to(&[".".into()], "a");
        assert!(dot.allows("a") && !dot.allows("b"));
        let list = Visibility::from_export_to(&["b".into(), "c".into()], "a");
        assert!(list.allows("c") && !list.allows("a"));
    }

    #[test]
    fn locality_strings() {
        let l = parse_locality("eu-west/zone-a");
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.subzone.as_str()),
            ("eu-west", "zone-a", "")
        );
    }
}
