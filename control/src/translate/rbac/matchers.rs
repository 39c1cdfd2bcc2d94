//! Low-level Envoy RBAC builders shared by the rule builder and the
//! condition handling: `Permission`/`Principal` constructors and their
//! AND/OR/NOT combinators, Istio's value-matching rules (wildcards,
//! namespaces, hosts, paths, ports, CIDRs, headers) and JWT metadata
//! principals. Kept apart from `rbac` so the policy-shaping logic reads
//! without the proto plumbing.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{permission, principal, Permission, Principal};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, metadata_matcher::PathSegment,
    path_matcher, string_matcher::MatchPattern, value_matcher, ListMatcher, MetadataMatcher,
    OrMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::ISTIO_AUTHN;

pub(super) fn perm(r: permission::Rule) -> Permission {
    Permission { rule: Some(r) }
}

pub(super) fn id(i: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}

pub(super) fn and_perm(mut v: Vec<Permission>) -> Permission {
    match v.len() {
        0 => perm(permission::Rule::Any(true)),
        1 => v.remove(0),
        _ => perm(permission::Rule::AndRules(permission::Set { rules: v })),
    }
}

pub(super) fn or_perm(mut v: Vec<Permission>) -> Permission {
    if v.len() == 1 {
        return v.remove(0);
    }
    perm(permission::Rule::OrRules(permission::Set { rules: v }))
}

fn not_perm(p: Permission) -> Permission {
    perm(permission::Rule::NotRule(Box::new(p)))
}

pub(super) fn and_id(mut v: Vec<Principal>) -> Principal {
    match v.len() {
        0 => id(principal::Identifier::Any(true)),
        1 => v.remove(0),
        _ => id(principal::Identifier::AndIds(principal::Set { ids: v })),
    }
}

pub(super) fn or_id(mut v: Vec<Principal>) -> Principal {
    if v.len() == 1 {
        return v.remove(0);
    }
    id(principal::Identifier::OrIds(principal::Set { ids: v }))
}

fn not_id(p: Principal) -> Principal {
    id(principal::Identifier::NotId(Box::new(p)))
}

/// `values` OR-ed, `not_values` as NOT(OR), both AND-ed; `None` when empty.
pub(super) fn values_perm<F: Fn(&str) -> Option<Permission>>(
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

pub(super) fn values_id<F: Fn(&str) -> Option<Principal>>(
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

pub(super) fn spiffe_principal(v: &str) -> Principal {
    // Principals are written `td/ns/x/sa/y`; accept a full URI too.
    let v = v.strip_prefix("spiffe://").unwrap_or(v);
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(wildcard(v, "spiffe://")),
        },
    ))
}

pub(super) fn namespace_principal(ns: &str) -> Principal {
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

pub(super) fn cidr(v: &str) -> Option<CidrRange> {
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

pub(super) fn header_matcher(name: &str, v: &str, ignore_case: bool) -> HeaderMatcher {
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
pub(super) fn host_perm(v: &str) -> Permission {
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

pub(super) fn path_perm(v: &str) -> Permission {
    let m = if v == "*" {
        sm(MatchPattern::Prefix(String::new()))
    } else {
        wildcard(v, "")
    };
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(m)),
    }))
}

pub(super) fn port_perm(v: &str) -> Option<Permission> {
    v.parse::<u16>()
        .ok()
        .map(|p| perm(permission::Rule::DestinationPort(u32::from(p))))
}

// Envoy deprecated `metadata` for `sourced_metadata`; Istio still emits it.
#[allow(deprecated)]
pub(super) fn metadata(filter: &str, path: &[&str], v: &str, list_too: bool) -> Principal {
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

pub(super) fn request_principal(v: &str) -> Principal {
    metadata(ISTIO_AUTHN, &["request.auth.principal"], v, false)
}
