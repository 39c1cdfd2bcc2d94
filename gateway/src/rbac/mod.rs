//! Role-based access control as Envoy expresses it: the
//! `envoy.filters.http.rbac` and `envoy.filters.network.rbac` filters with
//! `envoy.config.rbac.v3.RBAC` rules (policies of Permission / Principal
//! trees). The data plane knows nothing about Istio's AuthorizationPolicy;
//! the control plane translates it into these generic rules, so an Envoy
//! given the same xDS enforces the same thing.
//!
//! `compile` turns the protos into [`RbacFilter`]s once per listener update
//! (regular expressions compiled there, never per request); `eval` is a
//! pure function from an [`Attributes`] snapshot of one connection or
//! request to a [`Verdict`].

mod compile;
mod enforce;
mod eval;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde::Serialize;

use crate::config::{HeaderMatch, StringMatchCase};

pub(crate) use compile::{http_rbac_from_proto, network_rbac_from_proto};
pub use enforce::{check_connection, check_request, DENIED_BODY, DENIED_FLAG};
pub(crate) use enforce::{http_filter, network_filters};
pub use eval::{evaluate, Attributes, RequestAttributes, Verdict};

/// Filter name of the HTTP RBAC filter.
pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
/// Filter name of the network (TCP) RBAC filter.
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Dynamic metadata namespace of Envoy's JWT filter: `payload` holds the
/// verified token's claims (Envoy's `payload_in_metadata: payload`).
pub const JWT_AUTHN_METADATA: &str = "envoy.filters.http.jwt_authn";
/// Dynamic metadata namespace Istio's authn filter writes:
/// `request.auth.principal` (`iss/sub`), `request.auth.audiences`,
/// `request.auth.presenter`, `request.auth.claims`.
pub const ISTIO_AUTHN_METADATA: &str = "istio_authn";

/// One RBAC filter instance of a chain, in chain order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RbacFilter {
    /// The filter's name in the chain (for logs).
    pub name: String,
    /// `stat_prefix` / `rules_stat_prefix`, the metric label.
    pub stat_prefix: String,
    /// `None` when the filter has no `rules`: it then lets everything through.
    pub rules: Option<Rules>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacAction {
    /// Allow only what a policy matches.
    Allow,
    /// Deny what a policy matches.
    Deny,
    /// Record what a policy matches; never deny.
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rules {
    pub action: RbacAction,
    /// Sorted by name so evaluation (and the matched policy reported) does
    /// not depend on protobuf map order.
    pub policies: Vec<(String, Policy)>,
}

/// A policy matches when any permission and any principal match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What is accessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    UrlPath(StringMatchCase),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)` as Envoy's Int32Range.
    DestinationPortRange(i64, i64),
    Metadata(MetadataMatch),
    RequestedServerName(StringMatchCase),
}

/// Who is accessing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// `None`: any peer that presented a verified certificate.
    Authenticated(Option<StringMatchCase>),
    SourceIp(Cidr),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(StringMatchCase),
    Metadata(MetadataMatch),
}

/// An address prefix (`CidrRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_eq(&net.octets(), &a.octets(), u32::from(self.len))
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_eq(&net.octets(), &a.octets(), u32::from(self.len))
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// `MetadataMatcher` over the request's dynamic metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetadataMatch {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatch,
    pub invert: bool,
}

/// `ValueMatcher`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatch {
    Null,
    String(StringMatchCase),
    Bool(bool),
    Present(bool),
    /// Double range or exact, as bit patterns so the type stays `Eq`.
    DoubleExact(u64),
    DoubleRange(u64, u64),
    /// The value is a list and one element matches.
    ListOneOf(Box<ValueMatch>),
    Or(Vec<ValueMatch>),
}
