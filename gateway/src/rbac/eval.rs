//! Evaluation: a pure function of the compiled filters and one snapshot of
//! connection and request attributes.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use super::{
    MetadataMatch, Permission, Policy, Principal, RbacAction, RbacFilter, ValueMatch,
    ISTIO_AUTHN_METADATA, JWT_AUTHN_METADATA,
};
use crate::config::{HeaderMatch, HeaderMatchKind};

/// What RBAC may look at for one connection (and request, for HTTP).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The downstream peer of the TCP connection (`direct_remote_ip`).
    pub peer: SocketAddr,
    /// The original client address (`remote_ip`); the peer unless a trusted
    /// hop says otherwise. Without `x-forwarded-for` trust it is the peer.
    pub remote_ip: IpAddr,
    /// The local address the connection arrived on.
    pub destination: Option<SocketAddr>,
    /// `Some` when the peer presented a verified certificate: its URI SAN
    /// (SPIFFE ID), or an empty string for a certificate without one.
    pub principal: Option<&'a str>,
    /// SNI of the TLS ClientHello.
    pub sni: Option<&'a str>,
    /// `None` on a TCP (network filter) evaluation.
    pub request: Option<RequestAttributes<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct RequestAttributes<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// Path with query, as `:path`.
    pub path: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
    /// Verified JWT: `iss/sub` and the token's claims (set by the authn
    /// filter earlier in the chain).
    pub jwt: Option<(&'a str, &'a serde_json::Value)>,
}

/// The outcome of a chain of RBAC filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed {
        /// Policies of LOG filters that matched (Envoy's shadow/audit hint).
        logged: Vec<String>,
    },
    Denied {
        /// The filter's stat prefix.
        stat_prefix: String,
        /// The DENY policy that matched; `None` when no ALLOW policy did.
        policy: Option<String>,
    },
}

/// Runs the filters in chain order; the first denial wins.
pub fn evaluate<'f>(
    filters: impl IntoIterator<Item = &'f RbacFilter>,
    a: &Attributes<'_>,
) -> Verdict {
    let mut logged = Vec::new();
    for f in filters {
        let Some(rules) = &f.rules else { continue };
        let matched = rules
            .policies
            .iter()
            .find(|(_, p)| policy_matches(p, a))
            .map(|(n, _)| n);
        match (rules.action, matched) {
            (RbacAction::Allow, Some(_)) => {}
            (RbacAction::Allow, None) => {
                return Verdict::Denied {
                    stat_prefix: f.stat_prefix.clone(),
                    policy: None,
                }
            }
            (RbacAction::Deny, Some(name)) => {
                return Verdict::Denied {
                    stat_prefix: f.stat_prefix.clone(),
                    policy: Some(name.clone()),
                }
            }
            (RbacAction::Deny, None) => {}
            (RbacAction::Log, Some(name)) => logged.push(name.clone()),
            (RbacAction::Log, None) => {}
        }
    }
    Verdict::Allowed { logged }
}

pub(super) fn policy_matches(p: &Policy, a: &Attributes<'_>) -> bool {
    p.permissions.iter().any(|x| permission(x, a)) && p.principals.iter().any(|x| principal(x, a))
}

pub(super) fn permission(p: &Permission, a: &Attributes<'_>) -> bool {
    match p {
        Permission::Any => true,
        Permission::And(v) => v.iter().all(|x| permission(x, a)),
        Permission::Or(v) => v.iter().any(|x| permission(x, a)),
        Permission::Not(x) => !permission(x, a),
        Permission::Header(h) => header(h, a),
        Permission::UrlPath(m) => a.request.is_some_and(|r| m.matches(url_path(r.path))),
        Permission::DestinationIp(c) => a.destination.is_some_and(|d| c.contains(d.ip())),
        Permission::DestinationPort(p) => a.destination.is_some_and(|d| d.port() == *p),
        Permission::DestinationPortRange(s, e) => a
            .destination
            .is_some_and(|d| (*s..*e).contains(&i64::from(d.port()))),
        Permission::Metadata(m) => metadata(m, a),
        Permission::RequestedServerName(m) => m.matches(a.sni.unwrap_or("")),
    }
}

pub(super) fn principal(p: &Principal, a: &Attributes<'_>) -> bool {
    match p {
        Principal::Any => true,
        Principal::And(v) => v.iter().all(|x| principal(x, a)),
        Principal::Or(v) => v.iter().any(|x| principal(x, a)),
        Principal::Not(x) => !principal(x, a),
        Principal::Authenticated(None) => a.principal.is_some(),
        Principal::Authenticated(Some(m)) => a.principal.is_some_and(|id| m.matches(id)),
        Principal::SourceIp(c) | Principal::DirectRemoteIp(c) => c.contains(a.peer.ip()),
        Principal::RemoteIp(c) => c.contains(a.remote_ip),
        Principal::Header(h) => header(h, a),
        Principal::UrlPath(m) => a.request.is_some_and(|r| m.matches(url_path(r.path))),
        Principal::Metadata(m) => metadata(m, a),
    }
}

/// The path without query string or fragment, as Envoy's `url_path`.
pub(super) fn url_path(p: &str) -> &str {
    let end = p.find(['?', '#']).unwrap_or(p.len());
    &p[..end]
}

/// Envoy's header matching, including its rule for absent headers: only a
/// `present_match` can match a missing header (false, or true inverted).
pub(super) fn header(h: &HeaderMatch, a: &Attributes<'_>) -> bool {
    let Some(r) = a.request else {
        // No headers on a TCP connection: treat every header as absent.
        return absent_header_matches(h);
    };
    let value: Option<std::borrow::Cow<'_, str>> = match h.name.as_str() {
        ":method" => Some(r.method.into()),
        ":authority" | "host" => Some(r.authority.into()),
        ":path" => Some(r.path.into()),
        ":scheme" => Some(r.scheme.into()),
        name => {
            let mut vals = r.headers.get_all(name).iter().map(|v| v.to_str().ok());
            match vals.next() {
                None => None,
                Some(first) => {
                    let mut joined = first.unwrap_or("").to_string();
                    for v in vals {
                        joined.push(',');
                        joined.push_str(v.unwrap_or(""));
                    }
                    Some(joined.into())
                }
            }
        }
    };
    let Some(v) = value else {
        return absent_header_matches(h);
    };
    let m = match &h.kind {
        HeaderMatchKind::Present => true,
        HeaderMatchKind::Absent => false,
        HeaderMatchKind::Value(sm) => sm.matches(&v),
    };
    m != h.invert
}

fn absent_header_matches(h: &HeaderMatch) -> bool {
    match h.kind {
        HeaderMatchKind::Absent => !h.invert,
        HeaderMatchKind::Present => h.invert,
        HeaderMatchKind::Value(_) => false,
    }
}

/// Looks a metadata path up in what the authn filter verified. Supported
/// namespaces: Envoy's JWT filter (`payload.<claim>...`) and Istio's authn
/// keys (`request.auth.principal`, `.audiences`, `.presenter`, `.claims`).
fn lookup<'a>(
    m: &MetadataMatch,
    a: &Attributes<'a>,
) -> Option<std::borrow::Cow<'a, serde_json::Value>> {
    use std::borrow::Cow;
    let (principal, claims) = a.request?.jwt?;
    let (first, rest) = m.path.split_first()?;
    match (m.filter.as_str(), first.as_str()) {
        (JWT_AUTHN_METADATA, "payload") => walk(claims, rest).map(Cow::Borrowed),
        (ISTIO_AUTHN_METADATA, "request.auth.principal") if rest.is_empty() => {
            Some(Cow::Owned(serde_json::Value::String(principal.to_string())))
        }
        (ISTIO_AUTHN_METADATA, "request.auth.audiences") if rest.is_empty() => {
            claims.get("aud").map(Cow::Borrowed)
        }
        (ISTIO_AUTHN_METADATA, "request.auth.presenter") if rest.is_empty() => {
            claims.get("azp").map(Cow::Borrowed)
        }
        (ISTIO_AUTHN_METADATA, "request.auth.claims") => walk(claims, rest).map(Cow::Borrowed),
        _ => None,
    }
}

fn walk<'a>(mut v: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    for k in path {
        v = v.as_object()?.get(k)?;
    }
    Some(v)
}

fn metadata(m: &MetadataMatch, a: &Attributes<'_>) -> bool {
    let found = lookup(m, a);
    let matched = value_matches(&m.value, found.as_deref());
    matched != m.invert
}

pub(super) fn value_matches(m: &ValueMatch, v: Option<&serde_json::Value>) -> bool {
    use serde_json::Value as J;
    match (m, v) {
        (ValueMatch::Present(want), v) => v.is_some() == *want,
        (_, None) => false,
        (ValueMatch::Null, Some(J::Null)) => true,
        (ValueMatch::String(sm), Some(J::String(s))) => sm.matches(s),
        (ValueMatch::Bool(b), Some(J::Bool(x))) => b == x,
        (ValueMatch::DoubleExact(bits), Some(J::Number(n))) => {
            n.as_f64().is_some_and(|x| x == f64::from_bits(*bits))
        }
        (ValueMatch::DoubleRange(s, e), Some(J::Number(n))) => n
            .as_f64()
            .is_some_and(|x| x >= f64::from_bits(*s) && x < f64::from_bits(*e)),
        (ValueMatch::ListOneOf(inner), Some(J::Array(items))) => {
            items.iter().any(|i| value_matches(inner, Some(i)))
        }
        (ValueMatch::Or(ms), v) => ms.iter().any(|x| value_matches(x, v)),
        _ => false,
    }
}
