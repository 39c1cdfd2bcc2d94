//! AuthorizationPolicy checks that need the whole configuration: policies
//! that select no workload, principals of trust domains the mesh does not
//! know, ALLOW rules that a DENY policy always overrides (DENY is evaluated
//! first, whatever the order of the files), CUSTOM policies (not enforced),
//! and condition keys the translation does not understand.

use std::collections::BTreeMap;

use super::{Code, Diagnostic, Entry};
use crate::config::{
    AuthorizationAction, AuthorizationPolicySpec, Object, Resource, Rule, DEFAULT_TRUST_DOMAIN,
};
use crate::translate::rbac::known_condition_key;

pub(super) fn run(entries: &[Entry<'_>], root_ns: &str, out: &mut Vec<Diagnostic>) {
    let policies: Vec<(&Entry<'_>, &Object<AuthorizationPolicySpec>)> = entries
        .iter()
        .filter_map(|e| match e.resource {
            Resource::AuthorizationPolicy(p) => Some((e, p)),
            _ => None,
        })
        .collect();
    if policies.is_empty() {
        return;
    }
    let trust_domains = trust_domains(entries);
    let workloads = workloads(entries);
    for (e, p) in &policies {
        custom(e, p, out);
        selects_nothing(e, p, root_ns, &workloads, out);
        unknown_trust_domains(e, p, &trust_domains, out);
        unknown_conditions(e, p, out);
    }
    shadowed_allows(&policies, root_ns, out);
}

/// The mesh's trust domain (MeshConfig `trustDomain`) plus every trust
/// domain a MeshConfig names.
fn trust_domains(entries: &[Entry<'_>]) -> Vec<String> {
    let mut out: Vec<String> = entries
        .iter()
        .filter_map(|e| match e.resource {
            Resource::MeshConfig(m) => Some(m.spec.trust_domain().to_string()),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        out.push(DEFAULT_TRUST_DOMAIN.to_string());
    }
    out
}

/// (namespace, labels) of every workload the configuration declares.
fn workloads<'a>(entries: &'a [Entry<'a>]) -> Vec<(&'a str, &'a BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for e in entries {
        match e.resource {
            Resource::WorkloadEntry(we) => out.push((we.namespace(), &we.spec.labels)),
            Resource::ServiceEntry(se) => out.extend(
                se.spec
                    .endpoints
                    .iter()
                    .map(|ep| (se.namespace(), &ep.labels)),
            ),
            _ => {}
        }
    }
    out
}

fn custom(e: &Entry<'_>, p: &Object<AuthorizationPolicySpec>, out: &mut Vec<Diagnostic>) {
    if p.spec.action() == AuthorizationAction::Custom {
        let provider = p.spec.provider.as_ref().map_or("", |x| x.name.as_str());
        e.report(
            out,
            Code::AuthzCustomUnsupported,
            "spec.action",
            format!(
                "action CUSTOM (provider {provider:?}) is not supported: Isthmus has no external authorization, so this policy is NOT enforced; express it as ALLOW/DENY rules"
            ),
        );
    }
}

fn selects_nothing(
    e: &Entry<'_>,
    p: &Object<AuthorizationPolicySpec>,
    root_ns: &str,
    workloads: &[(&str, &BTreeMap<String, String>)],
    out: &mut Vec<Diagnostic>,
) {
    // Without any declared workload the analyzer cannot tell.
    if workloads.is_empty() {
        return;
    }
    let ns = p.namespace();
    let in_scope: Vec<_> = workloads
        .iter()
        .filter(|(wns, _)| ns == root_ns || *wns == ns)
        .collect();
    let selector = p
        .spec
        .selector
        .as_ref()
        .map(|s| &s.match_labels)
        .filter(|l| !l.is_empty());
    let matched = in_scope
        .iter()
        .any(|(_, labels)| selector.is_none_or(|s| crate::config::labels_match(s, labels)));
    if !matched {
        let (path, what) = match selector {
            Some(s) => (
                "spec.selector",
                format!(
                    "selector {{{}}} matches no workload in {}",
                    s.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if ns == root_ns {
                        "the mesh".to_string()
                    } else {
                        format!("namespace {ns:?}")
                    }
                ),
            ),
            None => (
                "metadata.namespace",
                format!("namespace {ns:?} has no workload"),
            ),
        };
        e.report(
            out,
            Code::AuthzSelectsNothing,
            path,
            format!("{what} (no WorkloadEntry or ServiceEntry endpoint), so this policy applies to nothing"),
        );
    }
}

/// `td/ns/x/sa/y` → `td`; `None` for wildcards that do not name one.
fn trust_domain_of(principal: &str) -> Option<&str> {
    let p = principal.strip_prefix("spiffe://").unwrap_or(principal);
    if p.starts_with('*') {
        return None;
    }
    let td = p.split('/').next()?;
    (!td.is_empty() && !td.contains('*') && p.contains('/')).then_some(td)
}

fn unknown_trust_domains(
    e: &Entry<'_>,
    p: &Object<AuthorizationPolicySpec>,
    known: &[String],
    out: &mut Vec<Diagnostic>,
) {
    let mut check = |path: String, v: &str| {
        if let Some(td) = trust_domain_of(v) {
            if !known.iter().any(|k| k == td) {
                e.report(
                    out,
                    Code::AuthzUnknownTrustDomain,
                    &path,
                    format!(
                        "principal {v:?} is in trust domain {td:?}, which is not this mesh's ({}); no workload certificate carries it, so it never matches (principals are written without spiffe://, e.g. cluster.local/ns/NS/sa/SA)",
                        known.join(", ")
                    ),
                );
            }
        }
    };
    for (r, rule) in p.spec.rules.iter().flatten().enumerate() {
        for (f, from) in rule.from.iter().enumerate() {
            let Some(s) = &from.source else { continue };
            for (i, v) in s.principals.iter().enumerate() {
                check(
                    format!("spec.rules[{r}].from[{f}].source.principals[{i}]"),
                    v,
                );
            }
            for (i, v) in s.not_principals.iter().enumerate() {
                check(
                    format!("spec.rules[{r}].from[{f}].source.notPrincipals[{i}]"),
                    v,
                );
            }
        }
        for (w, c) in rule.when.iter().enumerate() {
            if c.key == "source.principal" {
                for (i, v) in c.values.iter().enumerate() {
                    check(format!("spec.rules[{r}].when[{w}].values[{i}]"), v);
                }
            }
        }
    }
}

fn unknown_conditions(
    e: &Entry<'_>,
    p: &Object<AuthorizationPolicySpec>,
    out: &mut Vec<Diagnostic>,
) {
    for (r, rule) in p.spec.rules.iter().flatten().enumerate() {
        for (w, c) in rule.when.iter().enumerate() {
            if !c.key.is_empty() && !known_condition_key(&c.key) {
                e.report(
                    out,
                    Code::AuthzUnsupportedCondition,
                    &format!("spec.rules[{r}].when[{w}].key"),
                    format!(
                        "condition key {:?} is not supported; an ALLOW rule using it never matches, a DENY rule ignores it (and so matches more)",
                        c.key
                    ),
                );
            }
        }
    }
}

/// Both policies can apply to one workload.
fn overlap(
    a: &Object<AuthorizationPolicySpec>,
    b: &Object<AuthorizationPolicySpec>,
    root_ns: &str,
) -> bool {
    let (na, nb) = (a.namespace(), b.namespace());
    if na != nb && na != root_ns && nb != root_ns {
        return false;
    }
    let sel = |p: &Object<AuthorizationPolicySpec>| {
        p.spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default()
    };
    let (sa, sb) = (sel(a), sel(b));
    // Compatible unless one key is required with two different values.
    sa.iter().all(|(k, v)| sb.get(k).is_none_or(|w| w == v))
}

/// The DENY rule matches at least every request the ALLOW rule matches.
fn covers(deny: &Rule, allow: &Rule) -> bool {
    deny.is_empty()
        || deny == allow
        || (deny.to.is_empty() && deny.when.is_empty() && deny.from == allow.from)
        || (deny.from.is_empty() && deny.when.is_empty() && deny.to == allow.to)
}

fn shadowed_allows(
    policies: &[(&Entry<'_>, &Object<AuthorizationPolicySpec>)],
    root_ns: &str,
    out: &mut Vec<Diagnostic>,
) {
    let denies: Vec<_> = policies
        .iter()
        .filter(|(_, p)| p.spec.action() == AuthorizationAction::Deny)
        .collect();
    for (e, allow) in policies
        .iter()
        .filter(|(_, p)| p.spec.action() == AuthorizationAction::Allow)
    {
        for (r, rule) in allow.spec.rules.iter().flatten().enumerate() {
            let shadow = denies.iter().find(|(_, d)| {
                overlap(allow, d, root_ns)
                    && d.spec.rules.iter().flatten().any(|dr| covers(dr, rule))
            });
            if let Some((_, d)) = shadow {
                e.report(
                    out,
                    Code::AuthzAllowShadowedByDeny,
                    &format!("spec.rules[{r}]"),
                    format!(
                        "DENY policy {}/{} matches every request this ALLOW rule matches; DENY is evaluated before ALLOW regardless of order, so this rule never admits anything",
                        d.namespace(),
                        d.name()
                    ),
                );
            }
        }
    }
}
