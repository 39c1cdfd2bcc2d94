//! The sidecar injector: a mutating admission webhook (AdmissionReview v1)
//! that adds the Isthmus proxy (`isthmus-gateway --role sidecar`) to pods,
//! answering with a JSON Patch. Which pods reach it is decided by the
//! webhook's selectors (crate::install::webhook); the injector itself
//! honours the pod's `sidecar.istio.io/inject` label and annotation, skips
//! system namespaces and host-network pods, and answers an already
//! injected pod with no patch (re-invocation is a no-op).

pub mod ca_bundle;
pub mod capture;
pub mod patch;
pub mod review;
pub mod selector;
pub mod server;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::config::MeshConfigSpec;
use crate::install::webhook::{never_injected, INJECT_LABEL};
pub use capture::Interception;
use review::{AdmissionRequest, AdmissionResponse, AdmissionReview};

/// The proxy container's name.
pub const PROXY_CONTAINER: &str = "isthmus-proxy";
/// The capture init container's name.
pub const INIT_CONTAINER: &str = "isthmus-init";
/// Set on injected pods: what was added (re-injection check, uninjection).
pub const STATUS_ANNOTATION: &str = "isthmus.io/status";
/// The trust domain's root, projected into the proxy as a file.
pub const ROOT_ANNOTATION: &str = "isthmus.io/root-cert";

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the request's object is not a Pod: {0}")]
    NotAPod(String),
    #[error("cannot encode the patch: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What the injector adds, fixed per control plane.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    pub image: String,
    pub cluster_id: String,
    pub network: String,
    pub locality: String,
    pub trust_domain: String,
    /// PEM of the trust domain's root (verifies the CA's certificate).
    pub root_cert_pem: String,
    /// Used when the pod does not say (`sidecar.istio.io/interceptionMode`).
    pub default_interception: Interception,
}

impl InjectConfig {
    /// From the cluster's MeshConfig.
    pub fn from_mesh(mesh: &MeshConfigSpec, image: &str, root_cert_pem: &str) -> Self {
        Self {
            image: image.to_string(),
            cluster_id: mesh.cluster_id.clone(),
            network: mesh.network.clone().unwrap_or_default(),
            locality: mesh
                .locality
                .as_ref()
                .map(|l| l.to_istio_string())
                .unwrap_or_default(),
            trust_domain: mesh.trust_domain().to_string(),
            root_cert_pem: root_cert_pem.to_string(),
            // Istio's default: iptables REDIRECT to 15001/15006; pods opt
            // out with `sidecar.istio.io/interceptionMode: NONE`.
            default_interception: Interception::Redirect,
        }
    }
}

/// Why a pod is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotPodCreate,
    SystemNamespace(String),
    HostNetwork,
    OptedOut,
    AlreadyInjected,
}

fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" | "enabled" => Some(true),
        "false" | "no" | "n" | "off" | "disabled" => Some(false),
        _ => None,
    }
}

/// Whether to inject: the pod label wins over the legacy annotation.
pub fn decide(namespace: &str, pod: &Pod) -> Result<(), Skip> {
    if never_injected().iter().any(|n| n == namespace) {
        return Err(Skip::SystemNamespace(namespace.to_string()));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return Err(Skip::HostNetwork);
    }
    let meta = &pod.metadata;
    let said = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .or_else(|| meta.annotations.as_ref().and_then(|a| a.get(INJECT_LABEL)))
        .and_then(|v| truthy(v));
    if said == Some(false) {
        return Err(Skip::OptedOut);
    }
    let has_status = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
    let has_proxy = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == PROXY_CONTAINER || c.name == "istio-proxy")
    });
    if has_status || has_proxy {
        return Err(Skip::AlreadyInjected);
    }
    Ok(())
}

/// Answers one request; never panics on bad input.
pub fn review_request(config: &InjectConfig, req: &AdmissionRequest) -> AdmissionResponse {
    let allow = || AdmissionResponse::allow(&req.uid);
    let is_pod = req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod";
    if !is_pod || req.operation != "CREATE" {
        return allow();
    }
    let Some(object) = req.object.clone() else {
        return allow();
    };
    let pod: Pod = match serde_json::from_value(object) {
        Ok(p) => p,
        Err(e) => {
            return AdmissionResponse::deny(
                &req.uid,
                400,
                InjectError::NotAPod(e.to_string()).to_string(),
            )
        }
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    if let Err(skip) = decide(&namespace, &pod) {
        tracing::debug!(namespace, pod = ?pod.metadata.name.as_ref().or(pod.metadata.generate_name.as_ref()), ?skip, "not injecting");
        return allow();
    }
    match patch::build(config, &pod) {
        Ok((ops, warnings)) => match allow().with_patch(&ops) {
            Ok(mut r) => {
                r.warnings = warnings;
                r
            }
            Err(e) => AdmissionResponse::deny(&req.uid, 500, InjectError::Encode(e).to_string()),
        },
        // A malformed Isthmus/Istio annotation: refuse with the reason, so
        // the pod's owner sees it (`kubectl describe replicaset`).
        Err(e) => AdmissionResponse::deny(&req.uid, 400, e.to_string()),
    }
}

/// AdmissionReview in, AdmissionReview out.
pub fn review(
    config: &InjectConfig,
    input: &AdmissionReview,
) -> Result<AdmissionReview, InjectError> {
    let req = input.request.as_ref().ok_or(InjectError::NoRequest)?;
    Ok(AdmissionReview::answer(review_request(config, req)))
}

/// Label map helper for callers and tests.
pub fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}
