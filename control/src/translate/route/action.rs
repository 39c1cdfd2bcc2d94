//! What a matched route does: destinations and weights, retries, timeouts,
//! mirrors, rewrites, redirects, direct responses and header operations.

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    redirect_action, retry_policy as pb_retry, route, route_action, weighted_cluster,
    DirectResponseAction, RedirectAction, RetryPolicy, RouteAction, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::util::pack_any;

use crate::config::host::resolve_fqdn;
use crate::config::{
    Destination, HeaderOperations, HttpRedirect, HttpRetry, HttpRoute, RedirectPortSelection,
};

use super::super::naming::outbound_cluster;
use super::super::policy::effective;
use super::super::proto::{duration, secs, u32v};
use super::super::Context;
use super::fault::{fraction, int_fraction};
use super::matching::regex;

/// The cluster a VirtualService destination names: its port, else the
/// service's only port, else the port being routed.
pub fn destination_cluster(
    ctx: &Context<'_>,
    namespace: &str,
    dest: &Destination,
    listener_port: u16,
) -> String {
    let host = resolve_fqdn(&dest.host, namespace);
    let port = dest
        .port
        .as_ref()
        .and_then(|p| u16::try_from(p.number).ok())
        .or_else(|| {
            let svc = ctx.inputs.services.get(&host)?;
            (svc.ports.len() == 1).then(|| svc.ports[0].port)
        })
        .unwrap_or(listener_port);
    outbound_cluster(port, dest.subset.as_deref().unwrap_or(""), &host)
}

pub(super) fn route_action(
    ctx: &Context<'_>,
    ns: &str,
    http: &HttpRoute,
    port: u16,
) -> route::Action {
    if let Some(r) = &http.redirect {
        return route::Action::Redirect(redirect(r));
    }
    if let Some(d) = &http.direct_response {
        let body = d.body.as_ref().and_then(|b| {
            if b.string.is_none() && b.bytes.is_some() {
                tracing::warn!(virtual_service_namespace = %ns, "directResponse body.bytes is not supported yet; use body.string; sending no body");
            }
            b.string.clone().map(data_source::Specifier::InlineString)
        });
        return route::Action::DirectResponse(DirectResponseAction {
            status: d.status,
            body: body.map(|specifier| DataSource {
                specifier: Some(specifier),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut weighted: Vec<weighted_cluster::ClusterWeight> = Vec::new();
    let total: i64 = http
        .route
        .iter()
        .map(|d| i64::from(d.weight.unwrap_or(0).max(0)))
        .sum();
    for d in &http.route {
        let weight = if total == 0 {
            1
        } else {
            u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0)
        };
        if weight == 0 && http.route.len() > 1 {
            continue;
        }
        let mut cw = weighted_cluster::ClusterWeight {
            name: destination_cluster(ctx, ns, &d.destination, port),
            weight: Some(u32v(weight.max(1))),
            ..Default::default()
        };
        if let Some(h) = &d.headers {
            apply_header_ops(
                h.request.as_ref(),
                &mut cw.request_headers_to_add,
                &mut cw.request_headers_to_remove,
            );
            apply_header_ops(
                h.response.as_ref(),
                &mut cw.response_headers_to_add,
                &mut cw.response_headers_to_remove,
            );
        }
        weighted.push(cw);
    }
    let cluster_specifier = if weighted.len() == 1
        && weighted[0].request_headers_to_add.is_empty()
        && weighted[0].request_headers_to_remove.is_empty()
        && weighted[0].response_headers_to_add.is_empty()
        && weighted[0].response_headers_to_remove.is_empty()
    {
        route_action::ClusterSpecifier::Cluster(weighted.remove(0).name)
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weighted,
            ..Default::default()
        })
    };
    let hash_policy = http
        .route
        .first()
        .map(|d| hash_policy(ctx, ns, &d.destination, port))
        .unwrap_or_default();
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        hash_policy,
        timeout: Some(
            http.timeout
                .as_ref()
                .map(|d| duration(d.as_std()))
                .unwrap_or_else(|| secs(0)),
        ),
        retry_policy: retry_policy(http.retries.as_ref()),
        ..Default::default()
    };
    if let Some(rw) = &http.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(rr.pattern.as_str())),
                substitution: rr.rewrite.clone(),
            });
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(a.clone()),
            );
        }
    }
    if let Some(m) = &http.mirror {
        let pct = http
            .mirror_percentage
            .as_ref()
            .map(fraction)
            .or_else(|| http.mirror_percent.map(int_fraction));
        action
            .request_mirror_policies
            .push(mirror(ctx, ns, m, port, pct));
    }
    for m in &http.mirrors {
        action.request_mirror_policies.push(mirror(
            ctx,
            ns,
            &m.destination,
            port,
            m.percentage.as_ref().map(fraction),
        ));
    }
    route::Action::Route(action)
}

/// Consistent hashing is configured on the destination's DestinationRule
/// but expressed on the route (Envoy hashes per request).
pub(super) fn hash_policy(
    ctx: &Context<'_>,
    ns: &str,
    dest: &Destination,
    port: u16,
) -> Vec<route_action::HashPolicy> {
    use route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let host = resolve_fqdn(&dest.host, ns);
    let service_ns = ctx
        .inputs
        .services
        .get(&host)
        .map(|s| s.namespace.clone())
        .unwrap_or_default();
    let Some(rule) = ctx.scope.destination_rule(&host, &service_ns) else {
        return Vec::new();
    };
    let dest_port = dest
        .port
        .as_ref()
        .and_then(|p| u16::try_from(p.number).ok())
        .unwrap_or(port);
    let policy = effective(
        Some(&rule.spec),
        dest_port,
        dest.subset.as_deref().unwrap_or(""),
    );
    let Some(hash) = policy.load_balancer.and_then(|lb| lb.consistent_hash) else {
        return Vec::new();
    };
    let specifier = if let Some(h) = hash.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h,
            ..Default::default()
        })
    } else if let Some(c) = hash.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name,
            ttl: c.ttl.map(|d| duration(d.as_std())),
            path: c.path.unwrap_or_default(),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q })
    } else {
        return Vec::new();
    };
    vec![route_action::HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }]
}

pub(super) fn mirror(
    ctx: &Context<'_>,
    ns: &str,
    dest: &Destination,
    port: u16,
    pct: Option<FractionalPercent>,
) -> route_action::RequestMirrorPolicy {
    route_action::RequestMirrorPolicy {
        cluster: destination_cluster(ctx, ns, dest, port),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(pct.unwrap_or(FractionalPercent {
                numerator: 100,
                denominator: DenominatorType::Hundred as i32,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// VirtualService retries; unset means Istio's default (2 attempts),
/// `attempts: 0` turns retries off.
pub(super) fn retry_policy(retry: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let Some(r) = retry else {
        return Some(default_retry_policy());
    };
    let attempts = u32::try_from(r.attempts.unwrap_or(2)).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    let mut policy = RetryPolicy {
        num_retries: Some(u32v(attempts)),
        per_try_timeout: r.per_try_timeout.as_ref().map(|d| duration(d.as_std())),
        ..default_retry_policy()
    };
    if let Some(on) = &r.retry_on {
        // Istio accepts HTTP status codes among the conditions.
        let mut conditions = Vec::new();
        let mut codes = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) => codes.push(code),
                Err(_) => conditions.push(part.to_string()),
            }
        }
        if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
            conditions.push("retriable-status-codes".to_string());
        }
        policy.retry_on = conditions.join(",");
        policy.retriable_status_codes = codes;
    }
    if r.retry_remote_localities == Some(true) {
        // Istio: each retry may leave the priorities already tried, so a
        // request survives the loss of its whole local cluster.
        policy.retry_priority = Some(pb_retry::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(pb_retry::retry_priority::ConfigType::TypedConfig(pack_any(
                PreviousPrioritiesConfig {
                    update_frequency: i32::try_from(attempts).unwrap_or(i32::MAX),
                },
            ))),
        });
    }
    Some(policy)
}

pub(super) fn redirect(r: &HttpRedirect) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let code = match r.redirect_code.unwrap_or(301) {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    };
    let port = match (r.port, r.derive_port) {
        (Some(p), _) => p,
        (None, Some(RedirectPortSelection::FromProtocolDefault)) => {
            if r.scheme.as_deref() == Some("https") {
                443
            } else {
                80
            }
        }
        _ => 0,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: port,
        response_code: code as i32,
        scheme_rewrite_specifier: r
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: r
            .uri
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        ..Default::default()
    }
}

pub(super) fn apply_header_ops(
    ops: Option<&HeaderOperations>,
    add: &mut Vec<HeaderValueOption>,
    remove: &mut Vec<String>,
) {
    let Some(ops) = ops else {
        return;
    };
    let option = |k: &String, v: &String, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    add.extend(
        ops.set
            .iter()
            .map(|(k, v)| option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd)),
    );
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    remove.extend(ops.remove.iter().cloned());
}

/// Istio's retry policy when a route says nothing.
pub(super) fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .to_string(),
        num_retries: Some(u32v(2)),
        retriable_status_codes: vec![503],
        // As Istio: retries prefer hosts not tried yet; host selection is
        // redone at most 5 times to find one.
        retry_host_predicate: vec![pb_retry::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(pb_retry::retry_host_predicate::ConfigType::TypedConfig(
                pack_any(PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries() {
        assert_eq!(
            retry_policy(None).and_then(|p| p.num_retries),
            Some(u32v(2))
        );
        let off: HttpRetry = serde_yaml_ng::from_str("attempts: 0").expect("parses");
        assert_eq!(retry_policy(Some(&off)), None);
        let codes: HttpRetry =
            serde_yaml_ng::from_str("attempts: 3\nretryOn: gateway-error,503").expect("parses");
        let p = retry_policy(Some(&codes)).expect("retries on");
        assert_eq!(p.retry_on, "gateway-error,retriable-status-codes");
        assert_eq!(p.retriable_status_codes, vec![503]);
        assert_eq!(
            p.retry_host_predicate
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>(),
            ["envoy.retry_host_predicates.previous_hosts"],
            "Istio always avoids hosts already tried"
        );
        assert_eq!(p.retry_priority, None);
        let remote: HttpRetry =
            serde_yaml_ng::from_str("attempts: 3\nretryRemoteLocalities: true").expect("parses");
        let p = retry_policy(Some(&remote)).expect("retries on");
        assert_eq!(
            p.retry_priority.map(|r| r.name).as_deref(),
            Some("envoy.retry_priorities.previous_priorities")
        );
    }
}
