//! AuthorizationPolicy `when` conditions: which keys are understood
//! (also used by `isthmus analyze`) and how each becomes a destination
//! `Permission` or a source `Principal`, including JWT claims and request
//! headers. Split from `rbac` because the key table is its own concern.

use envoy_types::pb::envoy::config::rbac::v3::{permission, principal, Permission, Principal};

use crate::config::Condition;

use super::matchers::{
    cidr, header_matcher, id, metadata, namespace_principal, perm, port_perm, request_principal,
    spiffe_principal, values_id, values_perm, wildcard,
};
use super::{Gen, ISTIO_AUTHN, JWT_AUTHN};

/// `request.auth.claims[a][b]` → `["a", "b"]`.
pub(super) fn claim_path(key: &str) -> Option<Vec<&str>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut out = Vec::new();
    while let Some(r) = rest.strip_prefix('[') {
        let (k, after) = r.split_once(']')?;
        if k.is_empty() {
            return None;
        }
        out.push(k);
        rest = after;
    }
    (rest.is_empty() && !out.is_empty()).then_some(out)
}

/// The condition keys this translation understands (for `analyze`).
pub fn known_condition_key(key: &str) -> bool {
    matches!(
        key,
        "source.ip"
            | "remote.ip"
            | "source.namespace"
            | "source.principal"
            | "request.auth.principal"
            | "request.auth.audiences"
            | "request.auth.presenter"
            | "destination.ip"
            | "destination.port"
            | "connection.sni"
    ) || claim_path(key).is_some()
        || header_name(key).is_some()
}

fn header_name(key: &str) -> Option<&str> {
    let name = key.strip_prefix("request.headers[")?.strip_suffix(']')?;
    (!name.is_empty()).then_some(name)
}

pub(super) fn condition(
    g: &mut Gen,
    c: &Condition,
    perms: &mut Vec<Permission>,
    ids: &mut Vec<Principal>,
) {
    let (vals, nots) = (&c.values, &c.not_values);
    let key = c.key.as_str();
    match key {
        "source.ip" => ids.extend(values_id(vals, nots, |v| {
            cidr(v).map(|c| id(principal::Identifier::DirectRemoteIp(c)))
        })),
        "remote.ip" => ids.extend(values_id(vals, nots, |v| {
            cidr(v).map(|c| id(principal::Identifier::RemoteIp(c)))
        })),
        "source.namespace" => ids.extend(values_id(vals, nots, |v| Some(namespace_principal(v)))),
        "source.principal" => ids.extend(values_id(vals, nots, |v| Some(spiffe_principal(v)))),
        "destination.ip" => perms.extend(values_perm(vals, nots, |v| {
            cidr(v).map(|c| perm(permission::Rule::DestinationIp(c)))
        })),
        "destination.port" => perms.extend(values_perm(vals, nots, port_perm)),
        "connection.sni" => perms.extend(values_perm(vals, nots, |v| {
            Some(perm(permission::Rule::RequestedServerName(wildcard(v, ""))))
        })),
        "request.auth.principal" => {
            if g.http_only() {
                ids.extend(values_id(vals, nots, |v| Some(request_principal(v))));
            }
        }
        "request.auth.audiences" => {
            if g.http_only() {
                ids.extend(values_id(vals, nots, |v| {
                    Some(metadata(ISTIO_AUTHN, &["request.auth.audiences"], v, true))
                }));
            }
        }
        "request.auth.presenter" => {
            if g.http_only() {
                ids.extend(values_id(vals, nots, |v| {
                    Some(metadata(ISTIO_AUTHN, &["request.auth.presenter"], v, false))
                }));
            }
        }
        _ => {
            if let Some(path) = claim_path(key) {
                if g.http_only() {
                    let mut full = vec!["payload"];
                    full.extend(path);
                    ids.extend(values_id(vals, nots, |v| {
                        Some(metadata(JWT_AUTHN, &full, v, true))
                    }));
                }
            } else if let Some(name) = header_name(key) {
                if g.http_only() {
                    let name = name.to_ascii_lowercase();
                    ids.extend(values_id(vals, nots, |v| {
                        Some(id(principal::Identifier::Header(header_matcher(
                            &name, v, false,
                        ))))
                    }));
                }
            } else {
                tracing::warn!(key, "AuthorizationPolicy condition key not supported; rule treated as unmatchable for ALLOW");
                g.dropped = true;
            }
        }
    }
}
