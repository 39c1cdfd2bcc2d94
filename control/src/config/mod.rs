//! The configuration model: serde types for every kind Isthmus reads, with
//! Istio's field names and defaults. Every struct rejects unknown fields, so
//! a misspelt or mis-indented key is an error instead of a silent no-op.

mod destination_rule;
mod gateway;
pub mod host;
mod kind;
mod mesh;
mod meta;
mod multicluster;
mod secret;
mod security;
mod service_entry;
mod telemetry;
pub mod validate;
mod values;
mod virtual_service;

use serde::{Serialize, Serializer};

pub use destination_rule::*;
pub use gateway::*;
pub use kind::{lookup, Kind, TypeLookup, HANDLED_GROUPS};
pub use mesh::*;
pub use meta::*;
pub use multicluster::*;
pub use secret::*;
pub use security::*;
pub use service_entry::*;
pub use telemetry::*;
pub use values::*;
pub use virtual_service::*;

macro_rules! resources {
    ($($kind:ident => $ty:ty,)*) => {
        /// One typed resource of any kind Isthmus reads.
        // Resources are built once per document and shared behind `Arc`, so
        // the size spread between kinds costs nothing worth a Box per access.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Resource {
            $($kind($ty),)*
        }

        impl Resource {
            pub fn kind(&self) -> Kind {
                match self {
                    $(Resource::$kind(_) => Kind::$kind,)*
                }
            }

            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Resource::$kind(o) => &o.metadata,)*
                }
            }

            pub fn api_version(&self) -> &str {
                match self {
                    $(Resource::$kind(o) => &o.api_version,)*
                }
            }

            /// Deserializes one YAML document already known to be `kind`.
            pub fn from_yaml(kind: Kind, text: &str) -> Result<Resource, serde_yaml_ng::Error> {
                Ok(match kind {
                    $(Kind::$kind => Resource::$kind(serde_yaml_ng::from_str(text)?),)*
                })
            }
        }

        impl Serialize for Resource {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Resource::$kind(o) => o.serialize(s),)*
                }
            }
        }
    };
}

resources! {
    VirtualService => Object<VirtualServiceSpec>,
    DestinationRule => Object<DestinationRuleSpec>,
    Gateway => Object<GatewaySpec>,
    ServiceEntry => Object<ServiceEntrySpec>,
    WorkloadEntry => Object<WorkloadEntrySpec>,
    Sidecar => Object<SidecarSpec>,
    PeerAuthentication => Object<PeerAuthenticationSpec>,
    AuthorizationPolicy => Object<AuthorizationPolicySpec>,
    RequestAuthentication => Object<RequestAuthenticationSpec>,
    ServiceExport => Object<ServiceExportSpec>,
    ServiceImport => Object<ServiceImportSpec>,
    MeshConfig => Object<MeshConfigSpec>,
    Secret => SecretObject,
}

impl Resource {
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The effective namespace (`default` when the file names none).
    pub fn namespace(&self) -> &str {
        self.metadata().namespace()
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind(),
            namespace: self.namespace().to_string(),
            name: self.name().to_string(),
        }
    }

    pub fn to_yaml(&self) -> Result<String, serde_yaml_ng::Error> {
        serde_yaml_ng::to_string(self)
    }
}

/// Identity of a resource: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}
