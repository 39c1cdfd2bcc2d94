//! AuthorizationPolicy → Envoy RBAC, in the shapes Istio's pilot
//! (`pilot/pkg/security/authz/builder`) generates:
//!
//! - one `envoy.filters.http.rbac` filter per action, in Istio's order
//!   AUDIT (RBAC `LOG`), DENY, ALLOW; each holds one Envoy policy per
//!   AuthorizationPolicy rule, named `ns[NS]-policy[NAME]-rule[I]`;
//! - the same as `envoy.filters.network.rbac` filters on TCP chains, where
//!   HTTP-only fields cannot be evaluated: an ALLOW rule using one is
//!   dropped (it can never match), a DENY or AUDIT rule is kept without
//!   them (it matches more, failing closed);
//! - a rule becomes `Permission` (its `to` operations, OR-ed, AND-ed with the
//!   `when` conditions on the destination) and `Principal` (its `from`
//!   sources, OR-ed, AND-ed with the `when` conditions on the source);
//!   `not*` fields become `not_rule`/`not_id` around an OR.
//!
//! Principals are SPIFFE IDs written without `spiffe://`; namespaces match
//! the `/ns/NS/` segment of the peer's SPIFFE ID, so a policy admits a
//! workload of another cluster (same or another trust domain) by identity.
//! JWT attributes are read from dynamic metadata: `istio_authn`
//! (`request.auth.principal`, `.audiences`, `.presenter`) and
//! `envoy.filters.http.jwt_authn` `payload.<claim>` for
//! `request.auth.claims[...]`.
//!
//! CUSTOM policies are not enforced (no ext_authz); `isthmus analyze`
//! reports them.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

use crate::config::{
    labels_match, AuthorizationAction, AuthorizationPolicySpec, Object, Operation, Rule, Source,
};
use crate::store::ConfigSnapshot;

use super::proto::any;

mod condition;
mod matchers;

use condition::condition;
pub use condition::known_condition_key;
pub use matchers::wildcard;
use matchers::{
    and_id, and_perm, cidr, header_matcher, host_perm, id, namespace_principal, or_id, or_perm,
    path_perm, perm, port_perm, request_principal, spiffe_principal, values_id, values_perm,
};

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
const ISTIO_AUTHN: &str = "istio_authn";
const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

/// The AuthorizationPolicies that apply to a workload in `namespace` with
/// `labels`: those of the root namespace (mesh-wide) and of its own
/// namespace whose selector is absent or matches. Policies bound with
/// `targetRef(s)` (gateways, waypoints) are not selector policies and are
/// skipped here. Sorted by namespace and name for stable output.
pub fn applicable<'a>(
    config: &'a ConfigSnapshot,
    root_namespace: &str,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<&'a Object<AuthorizationPolicySpec>> {
    let mut out: Vec<_> = config
        .authorization_policies()
        .filter(|p| {
            let ns = p.namespace();
            (ns == root_namespace || ns == namespace)
                && p.spec.target_ref.is_none()
                && p.spec.target_refs.is_empty()
                && p.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| labels_match(&s.match_labels, labels))
        })
        .collect();
    out.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    out
}

/// Whether the generated rules run in the HTTP connection manager or on a
/// TCP chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Http,
    Tcp,
}

/// The RBAC rules per Envoy action, in Istio's filter order (LOG, DENY,
/// ALLOW). `None` for an action no policy uses; an ALLOW entry with no
/// policies (every rule dropped or `rules` absent) denies everything.
pub fn build_rules(policies: &[&Object<AuthorizationPolicySpec>], layer: Layer) -> Vec<Rbac> {
    let mut out = Vec::new();
    for (istio, envoy) in [
        (AuthorizationAction::Audit, Action::Log),
        (AuthorizationAction::Deny, Action::Deny),
        (AuthorizationAction::Allow, Action::Allow),
    ] {
        let selected: Vec<_> = policies
            .iter()
            .filter(|p| p.spec.action() == istio)
            .collect();
        if selected.is_empty() {
            continue;
        }
        let mut map = HashMap::new();
        for p in selected {
            for (i, rule) in p.spec.rules.iter().flatten().enumerate() {
                let name = format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace(), p.name());
                if let Some(policy) = rule_policy(rule, istio, layer) {
                    map.insert(name, policy);
                }
            }
        }
        out.push(Rbac {
            action: envoy as i32,
            policies: map,
            audit_logging_options: None,
        });
    }
    out
}

/// HTTP filters for an inbound connection manager (before the router).
pub fn http_filters(policies: &[&Object<AuthorizationPolicySpec>]) -> Vec<HttpFilter> {
    build_rules(policies, Layer::Http)
        .into_iter()
        .map(|rules| HttpFilter {
            name: HTTP_RBAC.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(HttpRbac {
                rules_stat_prefix: stat_prefix(&rules),
                rules: Some(rules),
                ..Default::default()
            }))),
            ..Default::default()
        })
        .collect()
}

/// Network filters for a TCP chain (before tcp_proxy).
pub fn network_filters(policies: &[&Object<AuthorizationPolicySpec>]) -> Vec<Filter> {
    build_rules(policies, Layer::Tcp)
        .into_iter()
        .map(|rules| {
            super::listener::network_filter(
                NETWORK_RBAC,
                any(NetworkRbac {
                    stat_prefix: format!("tcp.{}", stat_prefix(&rules)),
                    rules: Some(rules),
                    ..Default::default()
                }),
            )
        })
        .collect()
}

fn stat_prefix(rules: &Rbac) -> String {
    match Action::try_from(rules.action) {
        Ok(Action::Deny) => "deny.".into(),
        Ok(Action::Log) => "audit.".into(),
        _ => "allow.".into(),
    }
}

/// Tracks whether a rule used something the layer cannot evaluate.
struct Gen {
    layer: Layer,
    /// HTTP-only field on TCP, or an unknown condition key.
    dropped: bool,
}

impl Gen {
    /// `false` when the field cannot be evaluated at this layer.
    fn http_only(&mut self) -> bool {
        if self.layer == Layer::Tcp {
            self.dropped = true;
            false
        } else {
            true
        }
    }
}

fn rule_policy(rule: &Rule, action: AuthorizationAction, layer: Layer) -> Option<Policy> {
    let mut g = Gen {
        layer,
        dropped: false,
    };
    let mut perms = Vec::new();
    let tos: Vec<Permission> = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .filter_map(|op| operation(&mut g, op))
        .collect();
    if !tos.is_empty() {
        perms.push(or_perm(tos));
    }
    let mut ids = Vec::new();
    let froms: Vec<Principal> = rule
        .from
        .iter()
        .filter_map(|f| f.source.as_ref())
        .filter_map(|s| source(&mut g, s))
        .collect();
    if !froms.is_empty() {
        ids.push(or_id(froms));
    }
    for c in &rule.when {
        condition(&mut g, c, &mut perms, &mut ids);
    }
    // An ALLOW rule that cannot be evaluated as written never matches
    // (Istio drops it); DENY and AUDIT keep the rest of the rule, which
    // matches more requests.
    if g.dropped && action == AuthorizationAction::Allow {
        return None;
    }
    Some(Policy {
        permissions: vec![and_perm(perms)],
        principals: vec![and_id(ids)],
        ..Default::default()
    })
}

fn operation(g: &mut Gen, op: &Operation) -> Option<Permission> {
    let mut parts = Vec::new();
    if (!op.hosts.is_empty() || !op.not_hosts.is_empty()) && g.http_only() {
        parts.extend(values_perm(&op.hosts, &op.not_hosts, |v| {
            Some(host_perm(v))
        }));
    }
    parts.extend(values_perm(&op.ports, &op.not_ports, port_perm));
    if (!op.methods.is_empty() || !op.not_methods.is_empty()) && g.http_only() {
        parts.extend(values_perm(&op.methods, &op.not_methods, |v| {
            Some(perm(permission::Rule::Header(header_matcher(
                ":method", v, false,
            ))))
        }));
    }
    if (!op.paths.is_empty() || !op.not_paths.is_empty()) && g.http_only() {
        parts.extend(values_perm(&op.paths, &op.not_paths, |v| {
            Some(path_perm(v))
        }));
    }
    (!parts.is_empty()).then(|| and_perm(parts))
}

fn source(g: &mut Gen, s: &Source) -> Option<Principal> {
    let mut parts = Vec::new();
    parts.extend(values_id(&s.principals, &s.not_principals, |v| {
        Some(spiffe_principal(v))
    }));
    if (!s.request_principals.is_empty() || !s.not_request_principals.is_empty()) && g.http_only() {
        parts.extend(values_id(
            &s.request_principals,
            &s.not_request_principals,
            |v| Some(request_principal(v)),
        ));
    }
    parts.extend(values_id(&s.namespaces, &s.not_namespaces, |v| {
        Some(namespace_principal(v))
    }));
    parts.extend(values_id(&s.ip_blocks, &s.not_ip_blocks, |v| {
        cidr(v).map(|c| id(principal::Identifier::DirectRemoteIp(c)))
    }));
    parts.extend(values_id(
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        |v| cidr(v).map(|c| id(principal::Identifier::RemoteIp(c))),
    ));
    (!parts.is_empty()).then(|| and_id(parts))
}

/// Inserts the HTTP RBAC filters before the router (the last filter), after
/// any authentication filter already in the list.
pub fn with_http_rbac(
    mut hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager,
    policies: &[&Object<AuthorizationPolicySpec>],
) -> envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager{
    let filters = http_filters(policies);
    if !filters.is_empty() {
        let at = hcm.http_filters.len().saturating_sub(1);
        hcm.http_filters.splice(at..at, filters);
    }
    hcm
}

/// A chain's network filters: RBAC before a TCP terminal filter; HTTP
/// chains enforce inside the connection manager instead.
pub fn chain_filters(
    policies: &[&Object<AuthorizationPolicySpec>],
    terminal: Filter,
    http: bool,
) -> Vec<Filter> {
    let mut out = if http {
        Vec::new()
    } else {
        network_filters(policies)
    };
    out.push(terminal);
    out
}

#[cfg(test)]
mod tests;
