//! `RouteConfiguration` → virtual hosts, matchers and actions the HTTP router
//! evaluates. Everything the data plane cannot run exactly as written is
//! refused with the field path, so the control plane gets a precise NACK.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::{
    route, Route as PbRoute, RouteConfiguration, VirtualHost as PbVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;

use super::common::unpack;
use super::fault::{fault_from_proto, FaultConfig};
use super::route_action::{forward, header_ops, redirect, retry_policy};
use super::route_match::{route_match, Pattern, RouteMatch};
use super::{ConfigError, Ctx};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendAction {
    Append,
    AddIfAbsent,
    Overwrite,
    OverwriteIfExists,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderOp {
    pub name: String,
    pub value: String,
    pub action: AppendAction,
}

/// Header edits of one level (route configuration, virtual host, route, weighted cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderOps {
    pub request_add: Vec<HeaderOp>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<HeaderOp>,
    pub response_remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

/// Conditions from `retry_on`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    pub retriable_status_codes: bool,
    /// gRPC status conditions: cancelled, deadline-exceeded, internal,
    /// resource-exhausted, unavailable.
    pub grpc: [bool; 5],
}

pub const GRPC_RETRY_CODES: [(&str, u32); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("internal", 13),
    ("resource-exhausted", 8),
    ("unavailable", 14),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// `envoy.retry_host_predicates.previous_hosts`: retries avoid hosts already tried.
    pub previous_hosts: bool,
    /// `envoy.retry_priorities.previous_priorities`: every `update_frequency`
    /// attempts, retries leave the priorities already tried.
    pub previous_priorities: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightedTarget {
    pub cluster: String,
    pub weight: u32,
    pub headers: HeaderOps,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterChoice {
    Single(String),
    Weighted(Vec<WeightedTarget>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests mirrored, per million.
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    Header(String),
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardAction {
    pub clusters: ClusterChoice,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Pattern, String)>,
    pub host_rewrite: Option<String>,
    /// `None`: no timeout (Envoy: an explicit 0).
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub mirrors: Vec<Mirror>,
    pub hash: Vec<HashOn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub strip_query: bool,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Forward(Box<ForwardAction>),
    Redirect(Redirect),
    Direct { status: u16, body: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: HeaderOps,
    /// Per-route fault filter config (`typed_per_filter_config`).
    pub fault: Option<FaultConfig>,
    /// Per-route `local_ratelimit` config with its own bucket (crate::authn).
    #[serde(serialize_with = "crate::authn::ser_opt_arc")]
    pub ratelimit: Option<std::sync::Arc<crate::authn::RateLimiter>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualHost {
    pub name: String,
    /// Lower-case domains: exact, `*.suffix`/`*suffix`, `prefix*`, or `*`.
    pub domains: Vec<String>,
    /// `require_tls`: plaintext requests get a 301 to `https://`
    /// (a Gateway server's `httpsRedirect`; crate::http::router::decide).
    pub require_tls: bool,
    pub routes: Vec<Route>,
    pub headers: HeaderOps,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultConfig>,
    #[serde(serialize_with = "crate::authn::ser_opt_arc")]
    pub ratelimit: Option<std::sync::Arc<crate::authn::RateLimiter>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: HeaderOps,
}

pub fn route_config_from_proto(rc: &RouteConfiguration) -> Result<RouteTable, ConfigError> {
    let ctx = Ctx::new("RouteConfiguration", &rc.name);
    if rc.name.is_empty() {
        return Err(ctx.err("name", "route configuration name is empty"));
    }
    route_table(&ctx, "", rc)
}

/// Also used for an HCM's inline `route_config` (errors then name the listener).
pub(crate) fn route_table(
    ctx: &Ctx,
    prefix: &str,
    rc: &RouteConfiguration,
) -> Result<RouteTable, ConfigError> {
    if rc.vhds.is_some() {
        return Err(ctx.err(format!("{prefix}vhds"), "VHDS is not supported"));
    }
    let mut seen = std::collections::BTreeMap::new();
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let f = format!("{prefix}virtual_hosts[{i}]");
        let v = virtual_host(ctx, &f, vh)?;
        for d in &v.domains {
            if let Some(j) = seen.insert(d.clone(), i) {
                return Err(ctx.err(
                    format!("{f}.domains"),
                    format!(
                        "domain {d:?} is also in virtual_hosts[{j}]; each domain may appear once"
                    ),
                ));
            }
        }
        virtual_hosts.push(v);
    }
    Ok(RouteTable {
        name: rc.name.clone(),
        virtual_hosts,
        headers: header_ops(
            ctx,
            prefix,
            (&rc.request_headers_to_add, &rc.request_headers_to_remove),
            (&rc.response_headers_to_add, &rc.response_headers_to_remove),
        )?,
    })
}

fn virtual_host(ctx: &Ctx, f: &str, vh: &PbVirtualHost) -> Result<VirtualHost, ConfigError> {
    if vh.domains.is_empty() {
        return Err(ctx.err(
            format!("{f}.domains"),
            "a virtual host needs at least one domain",
        ));
    }
    let mut domains = Vec::new();
    for (i, d) in vh.domains.iter().enumerate() {
        let stars = d.matches('*').count();
        let ok = !d.is_empty()
            && (stars == 0 || (stars == 1 && (d.starts_with('*') || d.ends_with('*'))));
        if !ok {
            return Err(ctx.err(
                format!("{f}.domains[{i}]"),
                format!("{d:?} is not a domain, a leading/trailing \"*\" wildcard, or \"*\""),
            ));
        }
        domains.push(d.to_ascii_lowercase());
    }
    // ALL and EXTERNAL_ONLY alike: this proxy has no notion of internal
    // requests, so both redirect every plaintext request (Istio sends ALL
    // for a Gateway server's httpsRedirect).
    let require_tls = vh.require_tls != 0;
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        routes.push(route_from_proto(ctx, &format!("{f}.routes[{i}]"), r)?);
    }
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains,
        require_tls,
        routes,
        headers: header_ops(
            ctx,
            &format!("{f}."),
            (&vh.request_headers_to_add, &vh.request_headers_to_remove),
            (&vh.response_headers_to_add, &vh.response_headers_to_remove),
        )?,
        retry: match &vh.retry_policy {
            Some(p) => Some(retry_policy(ctx, &format!("{f}.retry_policy"), p)?),
            None => None,
        },
        fault: per_filter_fault(ctx, f, &vh.typed_per_filter_config)?,
        ratelimit: crate::authn::ratelimit::per_route(ctx, f, &vh.typed_per_filter_config)?,
    })
}

fn per_filter_fault(
    ctx: &Ctx,
    f: &str,
    m: &std::collections::HashMap<String, Any>,
) -> Result<Option<FaultConfig>, ConfigError> {
    let mut out = None;
    for (name, any) in m {
        let field = format!("{f}.typed_per_filter_config[{name:?}]");
        if name == FAULT_FILTER || any.type_url == <HttpFault as prost::Name>::type_url() {
            let hf: HttpFault = unpack(ctx, &field, any)?;
            out = Some(fault_from_proto(ctx, &field, &hf)?);
        } else if crate::authn::ratelimit::is_per_route(name, any) {
            // Parsed by crate::authn::ratelimit::per_route.
            continue;
        } else if any.type_url.ends_with("envoy.config.route.v3.FilterConfig") {
            // An optional/disabled wrapper for a filter we do not run: nothing to apply.
            continue;
        } else {
            return Err(ctx.err(
                field,
                format!(
                    "per-route config for filter {name:?} is not supported (only {FAULT_FILTER})"
                ),
            ));
        }
    }
    Ok(out)
}

fn route_from_proto(ctx: &Ctx, f: &str, r: &PbRoute) -> Result<Route, ConfigError> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{f}.match"), "a route needs a match"))?;
    let matcher = route_match(ctx, &format!("{f}.match"), m)?;
    let action = match &r.action {
        Some(route::Action::Route(a)) => {
            Action::Forward(Box::new(forward(ctx, &format!("{f}.route"), a)?))
        }
        Some(route::Action::Redirect(rd)) => {
            Action::Redirect(redirect(ctx, &format!("{f}.redirect"), rd)?)
        }
        Some(route::Action::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    ctx.err(
                        format!("{f}.direct_response.status"),
                        format!("{} is not an HTTP status (200-599)", d.status),
                    )
                })?;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(data_source::Specifier::InlineString(s)) => Some(s.clone()),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                Some(_) => {
                    return Err(ctx.err(
                        format!("{f}.direct_response.body"),
                        "only inline bodies are supported",
                    ))
                }
            };
            Action::Direct { status, body }
        }
        Some(route::Action::FilterAction(_)) | Some(route::Action::NonForwardingAction(_)) => {
            return Err(ctx.err(f, "filter_action/non_forwarding_action are not supported"))
        }
        None => return Err(ctx.err(f, "a route needs route, redirect or direct_response")),
    };
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        headers: header_ops(
            ctx,
            &format!("{f}."),
            (&r.request_headers_to_add, &r.request_headers_to_remove),
            (&r.response_headers_to_add, &r.response_headers_to_remove),
        )?,
        fault: per_filter_fault(ctx, f, &r.typed_per_filter_config)?,
        ratelimit: crate::authn::ratelimit::per_route(ctx, f, &r.typed_per_filter_config)?,
    })
}
