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

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, metadata_matcher::PathSegment,
    path_matcher, string_matcher::MatchPattern, value_matcher, ListMatcher, MetadataMatcher,
    OrMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::config::{
    labels_match, AuthorizationAction, AuthorizationPolicySpec, Condition, Object, Operation, Rule,
    Source,
};
use crate::store::ConfigSnapshot;

use super::proto::any;

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

fn perm(r: permission::Rule) -> Permission {
    Permission { rule: Some(r) }
}

fn id(i: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}

fn and_perm(mut v: Vec<Permission>) -> Permission {
    match v.len() {
        0 => perm(permission::Rule::Any(true)),
        1 => v.remove(0),
        _ => perm(permission::Rule::AndRules(permission::Set { rules: v })),
    }
}

fn or_perm(mut v: Vec<Permission>) -> Permission {
    if v.len() == 1 {
        return v.remove(0);
    }
    perm(permission::Rule::OrRules(permission::Set { rules: v }))
}

fn not_perm(p: Permission) -> Permission {
    perm(permission::Rule::NotRule(Box::new(p)))
}

fn and_id(mut v: Vec<Principal>) -> Principal {
    match v.len() {
        0 => id(principal::Identifier::Any(true)),
        1 => v.remove(0),
        _ => id(principal::Identifier::AndIds(principal::Set { ids: v })),
    }
}

fn or_id(mut v: Vec<Principal>) -> Principal {
    if v.len() == 1 {
        return v.remove(0);
    }
    id(principal::Identifier::OrIds(principal::Set { ids: v }))
}

fn not_id(p: Principal) -> Principal {
    id(principal::Identifier::NotId(Box::new(p)))
}

/// `values` OR-ed, `not_values` as NOT(OR), both AND-ed; `None` when empty.
fn values_perm<F: Fn(&str) -> Option<Permission>>(
    values: &[String],
    not_values: &[String],
    f: F,
) -> Vec<Permission> {
    let mut out = Vec::new();
    let pos: Vec<_> = values.iter().filter_map(|v| f(v.as_str())).collect();
    if !pos.is_empty() {
        out.push(or_perm(pos));
    } else if !values.is_empty() {
        // Values given but none usable: the field can never match.
        out.push(not_perm(perm(permission::Rule::Any(true))));
    }
    let neg: Vec<_> = not_values.iter().filter_map(|v| f(v.as_str())).collect();
    if !neg.is_empty() {
        out.push(not_perm(or_perm(neg)));
    }
    out
}

fn values_id<F: Fn(&str) -> Option<Principal>>(
    values: &[String],
    not_values: &[String],
    f: F,
) -> Vec<Principal> {
    let mut out = Vec::new();
    let pos: Vec<_> = values.iter().filter_map(|v| f(v.as_str())).collect();
    if !pos.is_empty() {
        out.push(or_id(pos));
    } else if !values.is_empty() {
        out.push(not_id(id(principal::Identifier::Any(true))));
    }
    let neg: Vec<_> = not_values.iter().filter_map(|v| f(v.as_str())).collect();
    if !neg.is_empty() {
        out.push(not_id(or_id(neg)));
    }
    out
}

fn sm(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    }
}

fn regex(r: String) -> MatchPattern {
    MatchPattern::SafeRegex(RegexMatcher {
        regex: r,
        engine_type: None,
    })
}

/// Istio's wildcard rule for a value: `*` any (non-empty), `*x` suffix,
/// `x*` prefix, otherwise exact; `prefix` is prepended (e.g. `spiffe://`).
pub fn wildcard(v: &str, prefix: &str) -> StringMatcher {
    if v == "*" {
        return sm(regex(".+".into()));
    }
    if let Some(s) = v.strip_prefix('*') {
        return sm(MatchPattern::Suffix(s.to_string()));
    }
    if let Some(p) = v.strip_suffix('*') {
        return sm(MatchPattern::Prefix(format!("{prefix}{p}")));
    }
    sm(MatchPattern::Exact(format!("{prefix}{v}")))
}

fn spiffe_principal(v: &str) -> Principal {
    // Principals are written `td/ns/x/sa/y`; accept a full URI too.
    let v = v.strip_prefix("spiffe://").unwrap_or(v);
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(wildcard(v, "spiffe://")),
        },
    ))
}

fn namespace_principal(ns: &str) -> Principal {
    let re = if ns == "*" {
        ".+".to_string()
    } else if let Some(p) = ns.strip_suffix('*') {
        format!(".*/ns/{}[^/]*/.*", escape(p))
    } else if let Some(s) = ns.strip_prefix('*') {
        format!(".*/ns/[^/]*{}/.*", escape(s))
    } else {
        format!(".*/ns/{}/.*", escape(ns))
    };
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(sm(regex(re))),
        },
    ))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn cidr(v: &str) -> Option<CidrRange> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()?),
        None => {
            let ip: std::net::IpAddr = v.parse().ok()?;
            (v, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    addr.parse::<std::net::IpAddr>().ok()?;
    Some(CidrRange {
        address_prefix: addr.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

fn header_matcher(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        let mut m = wildcard(v, "");
        m.ignore_case = ignore_case;
        HeaderMatchSpecifier::StringMatch(m)
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// `hosts` match `:authority` case-insensitively, with or without a port.
fn host_perm(v: &str) -> Permission {
    let port = "(:[0-9]+)?";
    let re = if v == "*" {
        ".+".to_string()
    } else if let Some(s) = v.strip_prefix('*') {
        format!(".*{}{port}", escape(s))
    } else if let Some(p) = v.strip_suffix('*') {
        format!("{}.*", escape(p))
    } else {
        format!("{}{port}", escape(v))
    };
    perm(permission::Rule::Header(HeaderMatcher {
        name: ":authority".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(regex(re)),
            ignore_case: true,
        })),
        ..Default::default()
    }))
}

fn path_perm(v: &str) -> Permission {
    let m = if v == "*" {
        sm(MatchPattern::Prefix(String::new()))
    } else {
        wildcard(v, "")
    };
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(m)),
    }))
}

fn port_perm(v: &str) -> Option<Permission> {
    v.parse::<u16>()
        .ok()
        .map(|p| perm(permission::Rule::DestinationPort(u32::from(p))))
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

// Envoy deprecated `metadata` for `sourced_metadata`; Istio still emits it.
#[allow(deprecated)]
fn metadata(filter: &str, path: &[&str], v: &str, list_too: bool) -> Principal {
    let string = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(wildcard(v, ""))),
    };
    let value = if list_too {
        // A claim may be a string or a list of strings.
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: vec![
                    string.clone(),
                    ValueMatcher {
                        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                            ListMatcher {
                                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                                    string,
                                ))),
                            },
                        ))),
                    },
                ],
            })),
        }
    } else {
        string
    };
    id(principal::Identifier::Metadata(MetadataMatcher {
        filter: filter.to_string(),
        path: path
            .iter()
            .map(|k| PathSegment {
                segment: Some(Segment::Key((*k).to_string())),
            })
            .collect(),
        value: Some(value),
        invert: false,
    }))
}

fn request_principal(v: &str) -> Principal {
    metadata(ISTIO_AUTHN, &["request.auth.principal"], v, false)
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

/// `request.auth.claims[a][b]` → `["a", "b"]`.
fn claim_path(key: &str) -> Option<Vec<&str>> {
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

fn condition(g: &mut Gen, c: &Condition, perms: &mut Vec<Permission>, ids: &mut Vec<Principal>) {
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

#[cfg(test)]
mod tests;

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
