//! VirtualService match conditions as Envoy route matches.

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route_match::PathSpecifier, HeaderMatcher, QueryParameterMatcher, RouteMatch,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::BoolValue;

use crate::config::host::{resolve_gateway_ref, GatewayRef};
use crate::config::{labels_match, HttpMatchRequest, HttpRoute, StringMatch};

use super::super::Context;
use super::RouteSite;

/// The matches of `http` that apply at this proxy and port; `Some(empty)`
/// for a route without matches, `None` when none applies.
pub(super) fn applicable_matches<'r>(
    ctx: &Context<'_>,
    vs_namespace: &str,
    http: &'r HttpRoute,
    site: RouteSite<'_>,
) -> Option<Vec<&'r HttpMatchRequest>> {
    if http.matches.is_empty() {
        return Some(Vec::new());
    }
    let applies = |m: &&HttpMatchRequest| {
        let port_ok = m.port.is_none_or(|p| p == u32::from(site.port));
        let labels_ok =
            m.source_labels.is_empty() || labels_match(&m.source_labels, &ctx.proxy.labels);
        let ns_ok = m
            .source_namespace
            .as_deref()
            .is_none_or(|ns| ns == ctx.proxy.namespace);
        let gw_ok = m.gateways.is_empty()
            || m.gateways.iter().any(|g| {
                match (resolve_gateway_ref(g, vs_namespace), site.gateway) {
                    (GatewayRef::Mesh, None) => true,
                    (GatewayRef::Gateway { namespace, name }, Some((gns, gname))) => {
                        namespace == gns && name == gname
                    }
                    _ => false,
                }
            });
        port_ok && labels_ok && ns_ok && gw_ok
    };
    let kept: Vec<&HttpMatchRequest> = http.matches.iter().filter(applies).collect();
    (!kept.is_empty()).then_some(kept)
}

pub(super) fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = if let Some(e) = &m.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        MatchPattern::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        MatchPattern::SafeRegex(regex(r.as_str()))
    } else {
        return None;
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

pub(super) fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

pub(super) fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        // `{}` in Istio means "present with any value".
        header_match_specifier: Some(match string_matcher(m) {
            Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        ..Default::default()
    }
}

pub(super) fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let path = match &m.uri {
        Some(u) if u.exact.is_some() => PathSpecifier::Path(u.exact.clone().unwrap_or_default()),
        Some(u) if u.prefix.is_some() => {
            PathSpecifier::Prefix(u.prefix.clone().unwrap_or_default())
        }
        Some(u) if u.regex.is_some() => {
            PathSpecifier::SafeRegex(regex(u.regex.as_ref().map(|r| r.as_str()).unwrap_or("")))
        }
        _ => PathSpecifier::Prefix("/".to_string()),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(name, sm)| header_matcher(name, sm, false))
        .collect();
    headers.extend(
        m.without_headers
            .iter()
            .map(|(name, sm)| header_matcher(name, sm, true)),
    );
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(name, sm, false));
        }
    }
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: (m.ignore_uri_case == Some(true)).then_some(BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(name, sm)| QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(match string_matcher(sm) {
                    Some(s) => QueryParameterMatchSpecifier::StringMatch(s),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..Default::default()
    }
}
