//! Which apiVersion/kind pairs Isthmus understands.

use std::fmt;

use serde::{Deserialize, Serialize};

/// API groups whose kinds Isthmus reads; anything else is skipped.
pub const HANDLED_GROUPS: [&str; 4] = [
    "networking.istio.io",
    "security.istio.io",
    "multicluster.x-k8s.io",
    "isthmus.io",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
    ServiceExport,
    ServiceImport,
    MeshConfig,
    /// core/v1 Secret (Gateway `credentialName`).
    Secret,
}

const NETWORKING_VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];
const SECURITY_VERSIONS: &[&str] = &["v1beta1", "v1"];
const MCS_VERSIONS: &[&str] = &["v1alpha1"];
const ISTHMUS_VERSIONS: &[&str] = &["v1alpha1"];
const CORE_VERSIONS: &[&str] = &["v1"];

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::ServiceExport,
        Kind::ServiceImport,
        Kind::MeshConfig,
        Kind::Secret,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::ServiceExport => "ServiceExport",
            Kind::ServiceImport => "ServiceImport",
            Kind::MeshConfig => "MeshConfig",
            Kind::Secret => "Secret",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::Sidecar => "networking.istio.io",
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            Kind::ServiceExport | Kind::ServiceImport => "multicluster.x-k8s.io",
            Kind::MeshConfig => "isthmus.io",
            // The core API group has no name.
            Kind::Secret => "",
        }
    }

    /// The apiVersions accepted for this kind, oldest first.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "networking.istio.io" => NETWORKING_VERSIONS,
            "security.istio.io" => SECURITY_VERSIONS,
            "multicluster.x-k8s.io" => MCS_VERSIONS,
            "" => CORE_VERSIONS,
            _ => ISTHMUS_VERSIONS,
        }
    }

    fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.name() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a document's `apiVersion` and `kind` mean to Isthmus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeLookup {
    Known(Kind),
    /// A kind Isthmus reads, at a version it does not accept.
    UnsupportedVersion {
        kind: Kind,
        version: String,
    },
    /// A kind of a handled group that Isthmus does not implement
    /// (e.g. networking.istio.io EnvoyFilter).
    UnsupportedKind {
        group: String,
        kind: String,
    },
    /// A group Isthmus does not handle at all (skipped, not a failure).
    ForeignGroup {
        group: String,
        kind: String,
    },
}

/// Splits `group/version` (core kinds have no group) and classifies it.
pub fn lookup(api_version: &str, kind: &str) -> TypeLookup {
    let (group, version) = match api_version.rsplit_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    // Of the core group only Secrets matter (Gateway credentials); a
    // Service or ConfigMap in the same directory is skipped as foreign.
    if group.is_empty() && kind == Kind::Secret.name() {
        return if CORE_VERSIONS.contains(&version) {
            TypeLookup::Known(Kind::Secret)
        } else {
            TypeLookup::UnsupportedVersion {
                kind: Kind::Secret,
                version: version.to_string(),
            }
        };
    }
    if !HANDLED_GROUPS.contains(&group) {
        return TypeLookup::ForeignGroup {
            group: group.to_string(),
            kind: kind.to_string(),
        };
    }
    match Kind::from_group_kind(group, kind) {
        None => TypeLookup::UnsupportedKind {
            group: group.to_string(),
            kind: kind.to_string(),
        },
        Some(k) if k.versions().contains(&version) => TypeLookup::Known(k),
        Some(k) => TypeLookup::UnsupportedVersion {
            kind: k,
            version: version.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_api_versions() {
        assert_eq!(
            lookup("networking.istio.io/v1alpha3", "VirtualService"),
            TypeLookup::Known(Kind::VirtualService)
        );
        assert_eq!(
            lookup("networking.istio.io/v1", "Sidecar"),
            TypeLookup::Known(Kind::Sidecar)
        );
        assert!(matches!(
            lookup("security.istio.io/v1alpha1", "PeerAuthentication"),
            TypeLookup::UnsupportedVersion { .. }
        ));
        assert!(matches!(
            lookup("networking.istio.io/v1alpha3", "EnvoyFilter"),
            TypeLookup::UnsupportedKind { .. }
        ));
        assert!(matches!(
            lookup("monitoring.coreos.com/v1", "ServiceMonitor"),
            TypeLookup::ForeignGroup { .. }
        ));
        assert!(matches!(
            lookup("v1", "Service"),
            TypeLookup::ForeignGroup { .. }
        ));
        assert_eq!(lookup("v1", "Secret"), TypeLookup::Known(Kind::Secret));
    }
}
