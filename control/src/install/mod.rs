//! `isthmus install`: the complete manifests for one cluster, rendered from
//! typed k8s-openapi objects (so a misspelt field is a compile error) and
//! serialized to YAML, plus the kustomize layout under `deploy/kubernetes/`.
//!
//! Layout of what is rendered, in apply order: the namespace, CRDs, RBAC,
//! this cluster's ConfigMaps, the control plane, the gateways, the injection
//! webhook and, optionally, prometheus-operator monitors. Everything except
//! the cluster's ConfigMaps (and its join token Secret) and the monitors is
//! the same for every cluster: that is the kustomize base. The webhook's
//! `caBundle` is not rendered: the control plane sets it at run time.

pub mod apply;
pub mod control;
pub mod crds;
pub mod gateways;
pub mod join;
pub mod k8s;
pub mod kustomize;
pub mod monitoring;
pub mod options;
pub mod proxy;
pub mod rbac;
pub mod webhook;

use k8s_openapi::api::core::v1::Namespace;
use serde::Serialize;
use serde_json::Value;

pub use join::JoinTicket;
pub use options::InstallOptions;

use crate::app::CONTROL_NAMESPACE;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot build the {kind} CRD schema: {reason}")]
    Schema { kind: String, reason: String },
    #[error("cannot serialize a manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write YAML: {0}")]
    Yaml(#[source] serde_yaml_ng::Error),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("applying {object}: {reason}")]
    Apply { object: String, reason: String },
}

/// One rendered object.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub value: Value,
}

impl Doc {
    pub fn new<T: Serialize>(object: &T) -> Result<Self, InstallError> {
        Ok(Self {
            value: serde_json::to_value(object)?,
        })
    }

    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }

    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }

    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// Groups of objects; each is one file in the kustomize layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Namespace,
    Crds,
    Rbac,
    Cluster,
    ControlPlane,
    Gateways,
    Webhook,
    Monitoring,
}

impl Part {
    pub fn file(self) -> &'static str {
        match self {
            Part::Namespace => "namespace.yaml",
            Part::Crds => "crds.yaml",
            Part::Rbac => "rbac.yaml",
            Part::Cluster => "cluster.yaml",
            Part::ControlPlane => "control-plane.yaml",
            Part::Gateways => "gateways.yaml",
            Part::Webhook => "webhook.yaml",
            Part::Monitoring => "monitoring.yaml",
        }
    }

    /// Same for every cluster: the kustomize base.
    pub fn in_base(self) -> bool {
        !matches!(self, Part::Cluster | Part::Monitoring)
    }
}

/// Everything for one cluster, grouped and in apply order.
pub fn render(opts: &InstallOptions) -> Result<Vec<(Part, Vec<Doc>)>, InstallError> {
    let namespace = Namespace {
        metadata: k8s::meta(
            CONTROL_NAMESPACE,
            None,
            &[("app.kubernetes.io/part-of", "isthmus")],
        ),
        ..Namespace::default()
    };
    let mut cluster = vec![
        Doc::new(&control::cluster_configmap(opts))?,
        Doc::new(&control::mesh_configmap(opts)?)?,
    ];
    opts.check_join()?;
    if let Some(token) = &opts.join_token {
        cluster.push(Doc::new(&join::secret(token))?);
    }
    let mut parts = vec![
        (Part::Namespace, vec![Doc::new(&namespace)?]),
        (Part::Crds, crds::render(opts)?),
        (Part::Rbac, rbac::render()?),
        (Part::Cluster, cluster),
        (
            Part::ControlPlane,
            vec![
                Doc::new(&control::data_claim())?,
                Doc::new(&control::deployment(opts))?,
                Doc::new(&control::service())?,
                Doc::new(&control::federation_service())?,
            ],
        ),
        (Part::Gateways, gateways::render(opts)?),
        (Part::Webhook, vec![Doc::new(&webhook::configuration())?]),
    ];
    if opts.service_monitor {
        parts.push((Part::Monitoring, monitoring::render()));
    }
    Ok(parts)
}

/// All objects, flattened in apply order.
pub fn render_docs(opts: &InstallOptions) -> Result<Vec<Doc>, InstallError> {
    Ok(render(opts)?.into_iter().flat_map(|(_, d)| d).collect())
}

/// Multi-document YAML, `---` between documents.
pub fn to_yaml(docs: &[Doc]) -> Result<String, InstallError> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&d.value).map_err(InstallError::Yaml)?);
    }
    Ok(out)
}
