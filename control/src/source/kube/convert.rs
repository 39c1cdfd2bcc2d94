//! Pure conversions from Kubernetes objects to the configuration model.
//!
//! A Service becomes a `ServiceEntry` (MESH_INTERNAL, STATIC, its selector
//! as `workloadSelector`) and every ready Pod behind an EndpointSlice a
//! `WorkloadEntry` (its IP, labels, service account and the locality of its
//! Node), which is exactly what the file source reads for a cluster's own
//! services: the translator cannot tell the two apart. Istio and MCS custom
//! resources are read through the same serde model and validation as files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;

use crate::analyze::{Code, Diagnostic};
use crate::config::host::service_fqdn;
use crate::config::{
    lookup, validate, Kind, LabelSelector, Location as MeshLocation, Object, ObjectMeta, Port,
    Resolution, Resource, ServiceEntrySpec, TypeLookup, WorkloadEntrySpec,
};
use crate::source::parse::{classify, clean_serde_message};
use crate::source::Location;

/// Topology labels Kubernetes sets on Nodes (and the deprecated betas).
const REGION_LABELS: [&str; 2] = [
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/region",
];
const ZONE_LABELS: [&str; 2] = [
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];
/// Istio's sub-zone label.
const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// The label an EndpointSlice carries naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotations worth nothing to the mesh and big enough to matter.
const DROPPED_ANNOTATIONS: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// Where a resource read from the API server "is": shown by the admin
/// pages and in findings instead of `file:line:column`.
pub fn location(resource: &str, namespace: &str, name: &str) -> Location {
    Location::new(
        Arc::new(PathBuf::from(format!(
            "kube://{resource}/{namespace}/{name}"
        ))),
        1,
        1,
    )
}

/// Is this location one of the Kubernetes source's?
pub fn is_kube_location(location: &Location) -> bool {
    location.file.to_string_lossy().starts_with("kube://")
}

/// The `region/zone/subzone` locality of a Node from its topology labels;
/// `None` when it has none.
pub fn node_locality(node: &Node) -> Option<String> {
    let labels = node.metadata.labels.as_ref()?;
    let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).cloned();
    let region = first(&REGION_LABELS)?;
    let zone = first(&ZONE_LABELS).unwrap_or_default();
    let subzone = labels.get(SUBZONE_LABEL).cloned().unwrap_or_default();
    Some(match (zone.is_empty(), subzone.is_empty()) {
        (true, _) => region,
        (false, true) => format!("{region}/{zone}"),
        (false, false) => format!("{region}/{zone}/{subzone}"),
    })
}

fn meta_of(namespace: &str, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: name.to_string(),
        namespace: Some(namespace.to_string()),
        labels,
        ..ObjectMeta::default()
    }
}

/// Why a Service has no ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// ExternalName services are DNS aliases outside the mesh.
    ExternalName,
    /// No ports: nothing to route to.
    NoPorts,
}

/// One endpoint of a selector-less Service (EndpointSlices written by hand
/// or by another controller), carried inline in the ServiceEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineEndpoint {
    pub address: String,
    pub ports: BTreeMap<String, u32>,
    pub locality: Option<String>,
}

/// The service port's name as the model names it: the Kubernetes name,
/// or the number for the single unnamed port Kubernetes allows.
fn port_name(name: Option<&str>, number: i32) -> String {
    match name {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => number.to_string(),
    }
}

/// The ServiceEntry standing for a Service.
pub fn service_entry(
    svc: &Service,
    inline: &[InlineEndpoint],
) -> Result<Object<ServiceEntrySpec>, Skip> {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(Skip::ExternalName);
    }
    let ports: Vec<Port> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let number = u32::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => {
                    u32::try_from(*t).ok()
                }
                // A named target port resolves per pod through the EndpointSlice.
                _ => None,
            };
            Some(Port {
                number,
                // appProtocol is Kubernetes' explicit protocol; the name's
                // prefix is Istio's older convention (applied by the translator).
                protocol: p.app_protocol.clone().map(|a| protocol_of_app(&a)),
                name: Some(port_name(p.name.as_deref(), p.port)),
                target_port,
            })
        })
        .collect();
    if ports.is_empty() {
        return Err(Skip::NoPorts);
    }
    let addresses: Vec<String> = spec
        .cluster_ips
        .unwrap_or_default()
        .into_iter()
        .chain(spec.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .fold(Vec::new(), |mut acc, ip| {
            if !acc.contains(&ip) {
                acc.push(ip);
            }
            acc
        });
    let selector = spec.selector.filter(|s| !s.is_empty());
    let endpoints = if selector.is_some() {
        Vec::new()
    } else {
        inline
            .iter()
            .map(|e| WorkloadEntrySpec {
                address: Some(e.address.clone()),
                ports: e.ports.clone(),
                locality: e.locality.clone(),
                ..WorkloadEntrySpec::default()
            })
            .collect()
    };
    Ok(Object {
        api_version: "networking.istio.io/v1".into(),
        kind: "ServiceEntry".into(),
        metadata: meta_of(
            namespace,
            name,
            svc.metadata.labels.clone().unwrap_or_default(),
        ),
        spec: ServiceEntrySpec {
            hosts: vec![service_fqdn(name, namespace)],
            addresses,
            ports,
            location: Some(MeshLocation::MeshInternal),
            resolution: Some(Resolution::Static),
            endpoints,
            workload_selector: selector.map(|labels| LabelSelector { labels }),
            ..ServiceEntrySpec::default()
        },
        status: None,
    })
}

/// Kubernetes `appProtocol` values to Istio protocol names.
fn protocol_of_app(app: &str) -> String {
    match app.to_ascii_lowercase().as_str() {
        "http" => "HTTP".into(),
        "http2" | "kubernetes.io/h2c" => "HTTP2".into(),
        "grpc" => "GRPC".into(),
        "https" => "HTTPS".into(),
        "tls" => "TLS".into(),
        "kubernetes.io/ws" | "kubernetes.io/wss" => "HTTP".into(),
        _ => "TCP".into(),
    }
}

/// What the EndpointSlices say about one Pod: its address and, per
/// service port name, the port it serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodEndpoint {
    pub address: String,
    pub ports: BTreeMap<String, u32>,
    /// The slice's zone hint, used when the Node is not known.
    pub zone: Option<String>,
}

/// Ready endpoints of one slice: by Pod name for endpoints backed by a Pod,
/// plus the ones with no Pod behind them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceEndpoints {
    pub by_pod: BTreeMap<String, PodEndpoint>,
    pub inline: Vec<InlineEndpoint>,
}

/// Reads the ready IP endpoints of a slice. `single_port` names the
/// Service's only port when it is unnamed (the slice then names it "").
pub fn slice_endpoints(slice: &EndpointSlice) -> SliceEndpoints {
    let mut out = SliceEndpoints::default();
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return out;
    }
    let ports: BTreeMap<String, u32> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u32::try_from(p.port?).ok()?;
            Some((p.name.clone().unwrap_or_default(), port))
        })
        .collect();
    for ep in slice.endpoints.iter().flatten() {
        // Kubernetes: a nil `ready` means ready.
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let Some(address) = ep.addresses.first().cloned() else {
            continue;
        };
        if !ready {
            continue;
        }
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        match pod {
            Some(pod) => {
                out.by_pod.insert(
                    pod,
                    PodEndpoint {
                        address,
                        ports: ports.clone(),
                        zone: ep.zone.clone(),
                    },
                );
            }
            None => out.inline.push(InlineEndpoint {
                address,
                ports: ports.clone(),
                locality: None,
            }),
        }
    }
    out
}

/// The WorkloadEntry of a ready Pod. `endpoints` are what every slice
/// referencing the Pod says, each with the Service's unnamed port's number
/// (to name the "" port the way the ServiceEntry does).
pub fn workload_entry(
    pod: &Pod,
    endpoints: &[(Option<i32>, &PodEndpoint)],
    node: Option<&Node>,
) -> Option<Object<crate::config::WorkloadEntrySpec>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref()?;
    let (_, first) = endpoints.first()?;
    let mut ports = BTreeMap::new();
    for (unnamed, ep) in endpoints {
        for (port_name, port) in &ep.ports {
            let key = match (port_name.is_empty(), unnamed) {
                (true, Some(n)) => n.to_string(),
                (true, None) => continue,
                (false, _) => port_name.clone(),
            };
            ports.entry(key).or_insert(*port);
        }
    }
    let locality = node
        .and_then(node_locality)
        .or_else(|| first.zone.clone().map(|z| format!("/{z}")));
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Some(Object {
        api_version: "networking.istio.io/v1".into(),
        kind: "WorkloadEntry".into(),
        metadata: meta_of(namespace, name, BTreeMap::new()),
        spec: WorkloadEntrySpec {
            address: Some(first.address.clone()),
            ports,
            labels,
            service_account: Some(service_account),
            locality,
            ..WorkloadEntrySpec::default()
        },
        status: None,
    })
}

/// A custom resource read as the model: the same serde types and
/// validation as a file, so an object `kubectl apply` accepted but Isthmus
/// cannot use is reported the same way.
pub fn custom_resource(
    obj: &DynamicObject,
    api_version: &str,
    kind_name: &str,
    plural: &str,
) -> Result<Resource, Vec<Diagnostic>> {
    let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let at = location(plural, namespace, name);
    let label = format!("{kind_name} {namespace}/{name}");
    let kind = match lookup(api_version, kind_name) {
        TypeLookup::Known(k) => k,
        other => {
            return Err(vec![Diagnostic::new(
                Code::UnsupportedVersion,
                at,
                Some(label),
                format!("{api_version} {kind_name} is not a kind Isthmus reads ({other:?})"),
            )])
        }
    };
    let mut annotations = obj.metadata.annotations.clone().unwrap_or_default();
    for a in DROPPED_ANNOTATIONS {
        annotations.remove(a);
    }
    // resourceVersion and status are left out: they change on every write
    // without changing what the mesh does, and would force full pushes.
    let mut doc = serde_json::json!({
        "apiVersion": api_version,
        "kind": kind_name,
        "metadata": {
            "name": name,
            "namespace": namespace,
        },
    });
    if let Some(labels) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        doc["metadata"]["labels"] = serde_json::json!(labels);
    }
    if !annotations.is_empty() {
        doc["metadata"]["annotations"] = serde_json::json!(annotations);
    }
    if let Some(uid) = &obj.metadata.uid {
        doc["metadata"]["uid"] = serde_json::json!(uid);
    }
    if let Some(generation) = obj.metadata.generation {
        doc["metadata"]["generation"] = serde_json::json!(generation);
    }
    if let Some(spec) = obj.data.get("spec") {
        doc["spec"] = spec.clone();
    }
    if kind == Kind::Secret {
        // A Secret has no spec: its payload is top-level.
        for field in ["type", "data", "stringData", "immutable"] {
            if let Some(v) = obj.data.get(field).filter(|v| !v.is_null()) {
                doc[field] = v.clone();
            }
        }
    }
    // The same wording and codes as for a file (positions are meaningless
    // here: the object has no file).
    let schema_error = |message: String| {
        let message = clean_serde_message(&message);
        vec![Diagnostic::new(
            classify(&message),
            at.clone(),
            Some(label.clone()),
            message,
        )]
    };
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| schema_error(e.to_string()))?;
    let resource = Resource::from_yaml(kind, &text).map_err(|e| schema_error(e.to_string()))?;
    let issues = validate::validate(&resource);
    let diagnostics: Vec<Diagnostic> = issues
        .into_iter()
        .map(|i| {
            Diagnostic::new(
                i.code,
                at.clone(),
                Some(label.clone()),
                format!("{}: {}", i.path, i.message),
            )
        })
        .collect();
    if diagnostics.iter().any(Diagnostic::is_error) {
        Err(diagnostics)
    } else {
        Ok(resource)
    }
}

/// The kinds a ServiceEntry or WorkloadEntry derived from the core API is
/// stored as.
pub fn derived_key(kind: Kind, namespace: &str, name: &str) -> crate::config::ResourceKey {
    crate::config::ResourceKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests;
