//! The registry's data model: what every cluster publishes about itself and
//! its exported services. Plain data, no I/O; the state machine applies
//! commands to it and the translator in `control` reads it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Region / zone / subzone of a cluster or an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// One member cluster of the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub network: String,
    pub locality: Locality,
    /// East-west gateway addresses for mTLS passthrough (`host:port`, TCP).
    pub eastwest_tcp: Vec<String>,
    /// East-west gateway addresses for the QUIC tunnel (`host:port`, UDP).
    pub eastwest_quic: Vec<String>,
    /// Ingress gateway addresses (`host:port`), used by global DNS.
    pub ingress: Vec<String>,
    /// PEM of this cluster's intermediate CA certificate.
    pub intermediate_pem: String,
    /// PEM of every root this cluster trusts (during a rotation, more than one).
    pub roots_pem: Vec<String>,
}

/// Key of a service across the federation (namespace sameness).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// Istio protocol name: HTTP, HTTP2, GRPC, TCP, TLS, HTTPS; empty when
    /// the exporting cluster declares none (an unnamed port: sniffed).
    pub protocol: String,
    pub target_port: u16,
}

/// A service as one cluster exports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedService {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Healthy,
    Unhealthy,
    /// The owning cluster's lease expired: kept, but not to be used.
    Unavailable,
}

/// One instance of an exported service in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: String,
    /// Port per service port name (the workload's target port).
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub locality: Locality,
    pub weight: u32,
    pub health: Health,
}

/// Everything one cluster publishes about one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterService {
    pub cluster: String,
    pub service: ExportedService,
    pub endpoints: Vec<Endpoint>,
}
