//! Route actions of a `RouteConfiguration`: forwarding (clusters, rewrites,
//! timeouts, retries, mirrors, hash policies), redirects, and header edits.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    redirect_action, retry_policy::retry_priority, route_action, RedirectAction,
    RetryPolicy as PbRetryPolicy, RouteAction,
};
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;

use super::common::{duration, unpack};
use super::route::{
    AppendAction, ClusterChoice, ForwardAction, HashOn, HeaderOp, HeaderOps, Mirror, Redirect,
    RetryOn, RetryPolicy, WeightedTarget, GRPC_RETRY_CODES,
};
use super::route_match::Pattern;
use super::{ConfigError, Ctx};

pub(crate) fn forward(ctx: &Ctx, f: &str, a: &RouteAction) -> Result<ForwardAction, ConfigError> {
    use route_action::ClusterSpecifier as CS;
    let clusters = match &a.cluster_specifier {
        Some(CS::Cluster(c)) if !c.is_empty() => ClusterChoice::Single(c.clone()),
        Some(CS::WeightedClusters(w)) => {
            if w.clusters.is_empty() {
                return Err(ctx.err(format!("{f}.weighted_clusters"), "needs at least one cluster"));
            }
            let mut out = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                let cf = format!("{f}.weighted_clusters.clusters[{i}]");
                if c.name.is_empty() {
                    return Err(ctx.err(format!("{cf}.name"), "empty (cluster_header is not supported)"));
                }
                out.push(WeightedTarget {
                    cluster: c.name.clone(),
                    weight: c.weight.as_ref().map_or(0, |w| w.value),
                    headers: header_ops(
                        ctx,
                        &format!("{cf}."),
                        (&c.request_headers_to_add, &c.request_headers_to_remove),
                        (&c.response_headers_to_add, &c.response_headers_to_remove),
                    )?,
                });
            }
            if out.iter().all(|t| t.weight == 0) {
                return Err(ctx.err(format!("{f}.weighted_clusters"), "all weights are zero"));
            }
            ClusterChoice::Weighted(out)
        }
        Some(CS::Cluster(_)) => return Err(ctx.err(format!("{f}.cluster"), "cluster name is empty")),
        Some(_) => {
            return Err(ctx.err(
                f,
                "cluster_header and cluster_specifier_plugin are not supported; use cluster or weighted_clusters",
            ))
        }
        None => return Err(ctx.err(f, "cluster or weighted_clusters is required")),
    };
    let regex_rewrite = match &a.regex_rewrite {
        Some(rw) => {
            let p = rw
                .pattern
                .as_ref()
                .ok_or_else(|| ctx.err(format!("{f}.regex_rewrite.pattern"), "required"))?;
            Some((
                Pattern::partial(ctx, &format!("{f}.regex_rewrite.pattern"), &p.regex)?,
                // Envoy uses \1 for groups; the regex crate uses ${1}.
                backrefs(&rw.substitution),
            ))
        }
        None => None,
    };
    if !a.prefix_rewrite.is_empty() && regex_rewrite.is_some() {
        return Err(ctx.err(f, "prefix_rewrite and regex_rewrite are mutually exclusive"));
    }
    let host_rewrite = match &a.host_rewrite_specifier {
        None => None,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => None,
        Some(_) => {
            return Err(ctx.err(
                format!("{f}.host_rewrite_specifier"),
                "only host_rewrite_literal is supported",
            ))
        }
    };
    // Envoy: unset means 15 s, zero disables.
    let timeout = match &a.timeout {
        None => Some(Duration::from_secs(15)),
        Some(d) => {
            let d = duration(ctx, &format!("{f}.timeout"), Some(d), Duration::ZERO)?;
            (!d.is_zero()).then_some(d)
        }
    };
    let retry = match &a.retry_policy {
        Some(p) => Some(retry_policy(ctx, &format!("{f}.retry_policy"), p)?),
        None => None,
    };
    let mut mirrors = Vec::new();
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        let mf = format!("{f}.request_mirror_policies[{i}]");
        if m.cluster.is_empty() {
            return Err(ctx.err(format!("{mf}.cluster"), "empty"));
        }
        let per_million = match m
            .runtime_fraction
            .as_ref()
            .and_then(|r| r.default_value.as_ref())
        {
            None => 1_000_000,
            Some(p) => super::fault::per_million(ctx, &format!("{mf}.runtime_fraction"), p)?,
        };
        mirrors.push(Mirror {
            cluster: m.cluster.clone(),
            per_million,
        });
    }
    let mut hash = Vec::new();
    for (i, h) in a.hash_policy.iter().enumerate() {
        use route_action::hash_policy::PolicySpecifier as P;
        match &h.policy_specifier {
            Some(P::Header(hd)) => hash.push(HashOn::Header(hd.header_name.to_ascii_lowercase())),
            Some(P::ConnectionProperties(c)) if c.source_ip => hash.push(HashOn::SourceIp),
            Some(P::QueryParameter(q)) => hash.push(HashOn::QueryParameter(q.name.clone())),
            // Cookies need response-side cookie generation; hash on nothing (host choice stays balanced).
            Some(P::Cookie(_)) => {
                tracing::debug!(field = %format!("{f}.hash_policy[{i}]"), "cookie hash policy ignored");
            }
            _ => return Err(ctx.err(
                format!("{f}.hash_policy[{i}]"),
                "only header, source_ip, query_parameter and cookie hash policies are supported",
            )),
        }
    }
    Ok(ForwardAction {
        clusters,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        timeout,
        retry,
        mirrors,
        hash,
    })
}

fn backrefs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            let mut n = String::new();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                n.push(d);
                chars.next();
            }
            out.push_str(&format!("${{{n}}}"));
        } else if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
    out
}

const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

pub(crate) fn retry_policy(
    ctx: &Ctx,
    f: &str,
    p: &PbRetryPolicy,
) -> Result<RetryPolicy, ConfigError> {
    let mut on = RetryOn::default();
    for cond in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        match cond {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "reset" | "reset-before-request" => on.reset = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            other => match GRPC_RETRY_CODES.iter().position(|(n, _)| *n == other) {
                Some(i) => on.grpc[i] = true,
                None => {
                    return Err(ctx.err(
                        format!("{f}.retry_on"),
                        format!("retry condition {other:?} is not supported (5xx, gateway-error, connect-failure, refused-stream, reset, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)"),
                    ))
                }
            },
        }
    }
    let mut previous_hosts = false;
    for (i, h) in p.retry_host_predicate.iter().enumerate() {
        if h.name == "envoy.retry_host_predicates.previous_hosts" {
            previous_hosts = true;
        } else {
            return Err(ctx.err(
                format!("{f}.retry_host_predicate[{i}]"),
                format!(
                    "{:?} is not supported (only envoy.retry_host_predicates.previous_hosts)",
                    h.name
                ),
            ));
        }
    }
    let previous_priorities = match &p.retry_priority {
        None => None,
        Some(rp) if rp.name == PREVIOUS_PRIORITIES => {
            let freq = match &rp.config_type {
                Some(retry_priority::ConfigType::TypedConfig(a)) => {
                    let c: PreviousPrioritiesConfig =
                        unpack(ctx, &format!("{f}.retry_priority.typed_config"), a)?;
                    c.update_frequency
                }
                None => 0,
            };
            if freq <= 0 {
                return Err(ctx.err(
                    format!("{f}.retry_priority.typed_config.update_frequency"),
                    "must be positive",
                ));
            }
            Some(freq as u32)
        }
        Some(rp) => {
            return Err(ctx.err(
                format!("{f}.retry_priority"),
                format!(
                    "{:?} is not supported (only {PREVIOUS_PRIORITIES})",
                    rp.name
                ),
            ))
        }
    };
    let mut retriable_status_codes = Vec::new();
    for c in &p.retriable_status_codes {
        retriable_status_codes.push(
            u16::try_from(*c)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    ctx.err(
                        format!("{f}.retriable_status_codes"),
                        format!("{c} is not an HTTP status"),
                    )
                })?,
        );
    }
    let per_try_timeout = match &p.per_try_timeout {
        None => None,
        Some(d) => {
            let d = duration(
                ctx,
                &format!("{f}.per_try_timeout"),
                Some(d),
                Duration::ZERO,
            )?;
            (!d.is_zero()).then_some(d)
        }
    };
    Ok(RetryPolicy {
        on,
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout,
        retriable_status_codes,
        previous_hosts,
        previous_priorities,
    })
}

pub(crate) fn redirect(ctx: &Ctx, f: &str, r: &RedirectAction) -> Result<Redirect, ConfigError> {
    use redirect_action::{
        PathRewriteSpecifier as PR, RedirectResponseCode as Code, SchemeRewriteSpecifier as SR,
    };
    let status = match Code::try_from(r.response_code) {
        Ok(Code::MovedPermanently) => 301,
        Ok(Code::Found) => 302,
        Ok(Code::SeeOther) => 303,
        Ok(Code::TemporaryRedirect) => 307,
        Ok(Code::PermanentRedirect) => 308,
        Err(_) => {
            return Err(ctx.err(
                format!("{f}.response_code"),
                format!("unknown redirect code {}", r.response_code),
            ))
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(SR::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SR::HttpsRedirect(false)) | None => None,
        Some(SR::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
    };
    let (path, prefix_rewrite) = match &r.path_rewrite_specifier {
        None => (None, None),
        Some(PR::PathRedirect(p)) => (Some(p.clone()), None),
        Some(PR::PrefixRewrite(p)) => (None, Some(p.clone())),
        Some(PR::RegexRewrite(_)) | Some(PR::PathRewrite(_)) => {
            return Err(ctx.err(format!("{f}.regex_rewrite"), "not supported for redirects"))
        }
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| ctx.err(format!("{f}.port_redirect"), format!("{p} is not a port")))?,
        ),
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path,
        prefix_rewrite,
        strip_query: r.strip_query,
        status,
    })
}

#[allow(deprecated)] // the legacy `append` field still wins when set.
pub(crate) fn header_ops(
    ctx: &Ctx,
    prefix: &str,
    request: (&[HeaderValueOption], &[String]),
    response: (&[HeaderValueOption], &[String]),
) -> Result<HeaderOps, ConfigError> {
    let adds = |list: &[HeaderValueOption], field: &str| -> Result<Vec<HeaderOp>, ConfigError> {
        let mut out = Vec::new();
        for (i, o) in list.iter().enumerate() {
            let hf = format!("{prefix}{field}[{i}]");
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| ctx.err(format!("{hf}.header"), "required"))?;
            let name = h.key.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.starts_with(':') {
                return Err(ctx.err(
                    format!("{hf}.header.key"),
                    format!("{:?} is not a header name that can be set", h.key),
                ));
            }
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(ctx.err(format!("{hf}.header.value"), "not a valid header value"));
            }
            if value.contains('%') {
                return Err(ctx.err(
                    format!("{hf}.header.value"),
                    "header value formatters (%...%) are not supported",
                ));
            }
            let action = match HeaderAppendAction::try_from(o.append_action) {
                Ok(HeaderAppendAction::AppendIfExistsOrAdd) => {
                    // The deprecated `append` field, when set, wins (false = overwrite).
                    match &o.append {
                        Some(b) if !b.value => AppendAction::Overwrite,
                        _ => AppendAction::Append,
                    }
                }
                Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
                Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => AppendAction::Overwrite,
                Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                Err(_) => return Err(ctx.err(format!("{hf}.append_action"), "unknown")),
            };
            out.push(HeaderOp {
                name,
                value,
                action,
            });
        }
        Ok(out)
    };
    let removes = |list: &[String], field: &str| -> Result<Vec<String>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, n)| {
                let n = n.to_ascii_lowercase();
                if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    Err(ctx.err(
                        format!("{prefix}{field}[{i}]"),
                        format!("{n:?} is not a header name"),
                    ))
                } else {
                    Ok(n)
                }
            })
            .collect()
    };
    Ok(HeaderOps {
        request_add: adds(request.0, "request_headers_to_add")?,
        request_remove: removes(request.1, "request_headers_to_remove")?,
        response_add: adds(response.0, "response_headers_to_add")?,
        response_remove: removes(response.1, "response_headers_to_remove")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backrefs_translate() {
        assert_eq!(backrefs("/v2/\\1/x"), "/v2/${1}/x");
        assert_eq!(backrefs("a$b"), "a$$b");
    }
}
