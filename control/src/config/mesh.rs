//! `isthmus.io/v1alpha1` MeshConfig: this cluster's identity in the mesh and
//! its federation peers.

use serde::{Deserialize, Serialize};

/// Istio's root namespace: mesh-wide policies live here.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// Unique among the federated clusters; names this cluster's registry
    /// entries and its intermediate CA.
    pub cluster_id: String,
    /// Workloads on the same network reach each other directly; others go
    /// through the east-west gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Export every local service without a ServiceExport per service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_all: Option<bool>,
    /// Where mesh-wide PeerAuthentication/AuthorizationPolicy live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<Federation>,
    /// This cluster's gateways as other clusters and clients reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<MeshGateways>,
    /// Global DNS for ingress (docs/dns.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::app::dns::DnsSettings>,
    // Observability, with Istio's meshConfig names (config/telemetry.rs).
    /// `/dev/stdout` or a file path; unset = no access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    /// `JSON` (default) or `TEXT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<super::telemetry::AccessLogEncoding>,
    /// Envoy format string (TEXT), or a JSON object of them (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tracing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<super::telemetry::ProxyDefaults>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<super::telemetry::MeshExtensionProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<super::telemetry::DefaultProviders>,
    /// Where sidecars send traffic for destinations outside the registry
    /// (a Sidecar resource's own policy wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<super::gateway::MeshOutboundTrafficPolicy>,
}

/// Published in the registry so other clusters route to this one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshGateways {
    /// `host:port` of the east-west gateway's mTLS passthrough port (15443/TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west: Option<String>,
    /// `host:port` of the east-west gateway's QUIC tunnel (UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west_quic: Option<String>,
    /// `host:port` addresses of the ingress gateways, for global DNS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<String>,
}

impl MeshConfigSpec {
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }

    pub fn root_namespace(&self) -> &str {
        self.root_namespace
            .as_deref()
            .unwrap_or(DEFAULT_ROOT_NAMESPACE)
    }

    pub fn export_all(&self) -> bool {
        self.export_all.unwrap_or(false)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Locality {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subzone: Option<String>,
}

impl Locality {
    /// Istio's `region/zone/subzone` string form.
    pub fn to_istio_string(&self) -> String {
        let parts = [&self.region, &self.zone, &self.subzone];
        let mut out: Vec<&str> = parts.iter().map(|p| p.as_deref().unwrap_or("")).collect();
        while out.last() == Some(&"") {
            out.pop();
        }
        out.join("/")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Federation {
    /// UDP address the federation node listens on (QUIC), e.g. `0.0.0.0:15031`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The other clusters' federation nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<FederationPeer>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FederationPeer {
    /// The peer's cluster id.
    pub id: String,
    /// `host:port` of the peer's federation listener.
    pub address: String,
    /// How this cluster's workloads reach the peer's services: `tcp`
    /// (default: mTLS straight to the peer's east-west gateway, 15443/TCP)
    /// or `quic` (through this cluster's east-west gateway and the QUIC
    /// tunnel to the peer's, which must publish `gateways.eastWestQuic`;
    /// TCP is the fallback when UDP is blocked). docs/architecture.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<PeerTransport>,
}

/// Transport towards one peer cluster.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PeerTransport {
    #[default]
    Tcp,
    Quic,
}
