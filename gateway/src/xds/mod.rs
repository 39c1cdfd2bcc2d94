//! xDS (ADS) client of the data plane.

pub mod client;
mod delta;
pub mod transport;

pub use client::{XdsClient, SECRET_WARM_TIMEOUT};
pub use transport::{XdsTarget, XdsTransport};

/// Resource types the data plane subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeKind {
    Cluster,
    Listener,
    Endpoint,
    Secret,
    Route,
    /// Istio's NDS name table, for the DNS proxy (only when it runs).
    NameTable,
}

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

impl TypeKind {
    pub fn type_url(self) -> &'static str {
        match self {
            TypeKind::Cluster => CLUSTER_TYPE,
            TypeKind::Listener => LISTENER_TYPE,
            TypeKind::Endpoint => ENDPOINT_TYPE,
            TypeKind::Secret => SECRET_TYPE,
            TypeKind::Route => ROUTE_TYPE,
            TypeKind::NameTable => crate::dnsproxy::NAME_TABLE_TYPE,
        }
    }

    pub fn from_url(url: &str) -> Option<Self> {
        [
            TypeKind::Cluster,
            TypeKind::Listener,
            TypeKind::Endpoint,
            TypeKind::Secret,
            TypeKind::Route,
            TypeKind::NameTable,
        ]
        .into_iter()
        .find(|k| k.type_url() == url)
    }

    /// CDS and LDS are wildcard subscriptions; EDS, SDS and RDS are by name.
    pub fn wildcard(self) -> bool {
        matches!(
            self,
            TypeKind::Cluster | TypeKind::Listener | TypeKind::NameTable
        )
    }

    pub fn short(self) -> &'static str {
        match self {
            TypeKind::Cluster => "cds",
            TypeKind::Listener => "lds",
            TypeKind::Endpoint => "eds",
            TypeKind::Secret => "sds",
            TypeKind::Route => "rds",
            TypeKind::NameTable => "nds",
        }
    }

    pub(crate) fn resource_kind(self) -> &'static str {
        match self {
            TypeKind::Cluster => "Cluster",
            TypeKind::Listener => "Listener",
            TypeKind::Endpoint => "ClusterLoadAssignment",
            TypeKind::Secret => "Secret",
            TypeKind::Route => "RouteConfiguration",
            TypeKind::NameTable => "NameTable",
        }
    }
}

/// Which ADS variant to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdsMode {
    /// Delta ADS, falling back to state of the world when the server does
    /// not implement delta.
    #[default]
    Auto,
    Delta,
    StateOfTheWorld,
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("the control plane does not implement delta ADS")]
    DeltaUnsupported,
    #[error("cannot connect to the control plane at {0}: {1} (check the xDS address and that the control plane is up)")]
    Connect(String, String),
    #[error("xDS address {0:?}: {1}")]
    Address(String, String),
    #[error("ADS stream: {0}")]
    Stream(String),
}
