//! Typed, validated data-plane configuration built from Envoy v3 protos.
//!
//! Every conversion either yields a config the data plane can run exactly as
//! written or a [`ConfigError`] naming the resource, the field and the reason.
//! Those errors become the `error_detail` of an xDS NACK, so they are written
//! for the operator of the control plane.

mod cluster;
pub(crate) mod common;
mod dns_cluster;
mod endpoint;
pub(crate) mod fault;
mod http;
mod keepalive;
mod listener;
mod origination;
pub(crate) mod route;
mod route_action;
pub(crate) mod route_match;
mod secret;
mod server_tls;

pub use cluster::{
    cluster_from_proto, CircuitBreakerThresholds, ClusterConfig, Discovery, HttpUpstreamOptions,
    LbPolicy, OutlierConfig, RetryBudget, SuccessRateConfig, UpstreamProtocol, UpstreamTls,
};
pub use common::{SanMatcher, Validation};
pub use dns_cluster::{DnsDiscovery, DnsHost, DnsKind, LookupFamily, DEFAULT_DNS_REFRESH};
pub use endpoint::{
    load_assignment_from_proto, EndpointConfig, Health, LoadAssignment, LocalityEndpoints,
    LocalityName, DEFAULT_OVERPROVISIONING,
};
pub use fault::{AbortWith, FaultConfig};
pub use http::{Codec, HttpConfig, RouteSource};
pub use keepalive::TcpKeepalive;
pub use listener::{
    listener_from_proto, ChainMatch, CidrRange, DownstreamTls, FilterChainConfig, ListenerConfig,
    NetworkFilter, TcpProxyConfig, TcpRoute, TransportProtocol,
};
pub use origination::{ClientCertSource, Origination};
pub use route::{
    route_config_from_proto, Action, AppendAction, ClusterChoice, ForwardAction, HashOn, HeaderOp,
    HeaderOps, Mirror, Redirect, RetryOn, RetryPolicy, Route, RouteTable, VirtualHost,
    WeightedTarget, GRPC_RETRY_CODES,
};
pub use route_match::{
    HeaderMatch, HeaderMatchKind, PathMatch, Pattern, QueryMatch, RouteMatch, StringMatch,
    StringMatchCase,
};
pub use secret::{secret_from_proto, SecretConfig};
pub use server_tls::ServerCertSource;

/// The SDS name of the proxy's own certificate; produced locally, never sent
/// by the control plane because private keys never leave the workload.
pub const DEFAULT_CERT_SECRET: &str = "default";
/// The SDS name of the federation trust bundle served by the control plane.
pub const ROOT_CA_SECRET: &str = "ROOTCA";

/// An xDS resource the data plane could not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} \"{name}\": {field}: {reason}")]
pub struct ConfigError {
    /// Resource kind (`Listener`, `Cluster`, `ClusterLoadAssignment`, `Secret`).
    pub kind: &'static str,
    /// Resource name as sent by the control plane.
    pub name: String,
    /// Path of the offending field inside the resource.
    pub field: String,
    /// What is wrong and what the data plane supports instead.
    pub reason: String,
}

/// Builds errors for one resource without repeating its kind and name.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    kind: &'static str,
    name: String,
}

impl Ctx {
    pub(crate) fn new(kind: &'static str, name: &str) -> Self {
        Self {
            kind,
            name: name.to_string(),
        }
    }

    pub(crate) fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            kind: self.kind,
            name: self.name.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests;
