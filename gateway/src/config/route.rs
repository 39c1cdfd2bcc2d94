//! `RouteConfiguration` → virtual hosts, matchers and actions the HTTP router
//! evaluates. Everything the data plane cannot run exactly as written is
//! refused with the field path, so the control plane gets a precise NACK.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route, route_action, route_match::PathSpecifier, HeaderMatcher,
    RedirectAction, RetryPolicy as PbRetryPolicy, Route as PbRoute, RouteAction,
    RouteConfiguration, RouteMatch as PbRouteMatch, VirtualHost as PbVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::Any;
use serde::Serialize;

use super::common::{duration, unpack};
use super::fault::{fault_from_proto, FaultConfig};
use super::{ConfigError, Ctx};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// A compiled regular expression that compares and serialises as its source.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}
impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl Pattern {
    /// Envoy's safe_regex matches the whole value (RE2 full match).
    pub(crate) fn full(ctx: &Ctx, field: &str, re: &str) -> Result<Self, ConfigError> {
        regex::Regex::new(&format!("^(?:{re})$"))
            .map(Pattern)
            .map_err(|e| ctx.err(field, format!("invalid regex {re:?}: {e}")))
    }

    /// For substitutions: matches anywhere.
    pub(crate) fn partial(ctx: &Ctx, field: &str, re: &str) -> Result<Self, ConfigError> {
        regex::Regex::new(re)
            .map(Pattern)
            .map_err(|e| ctx.err(field, format!("invalid regex {re:?}: {e}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
}

/// A string matcher with Envoy's `ignore_case`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StringMatchCase {
    pub pattern: StringMatch,
    pub ignore_case: bool,
}

impl StringMatchCase {
    pub fn matches(&self, v: &str) -> bool {
        let (v, ic) = (v, self.ignore_case);
        let eq = |a: &str, b: &str| if ic { a.eq_ignore_ascii_case(b) } else { a == b };
        match &self.pattern {
            StringMatch::Exact(s) => eq(v, s),
            StringMatch::Prefix(s) => v.len() >= s.len() && v.is_char_boundary(s.len()) && eq(&v[..s.len()], s),
            StringMatch::Suffix(s) => {
                v.len() >= s.len()
                    && v.is_char_boundary(v.len() - s.len())
                    && eq(&v[v.len() - s.len()..], s)
            }
            StringMatch::Contains(s) => {
                if ic {
                    v.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    v.contains(s.as_str())
                }
            }
            StringMatch::Regex(p) => p.0.is_match(v),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Pattern),
    /// Prefix that must end at a `/` (or the end of the path).
    SeparatedPrefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderMatchKind {
    Present,
    Absent,
    Value(StringMatchCase),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Lower case; pseudo-headers (`:method`, `:authority`...) included.
    pub name: String,
    pub kind: HeaderMatchKind,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<StringMatchCase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// `grpc: {}`: only requests with a gRPC content type.
    pub grpc: bool,
}

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualHost {
    pub name: String,
    /// Lower-case domains: exact, `*.suffix`/`*suffix`, `prefix*`, or `*`.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: HeaderOps,
    pub retry: Option<RetryPolicy>,
    pub fault: Option<FaultConfig>,
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
    if !rc.vhds.is_none() {
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
                    format!("domain {d:?} is also in virtual_hosts[{j}]; each domain may appear once"),
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
        return Err(ctx.err(format!("{f}.domains"), "a virtual host needs at least one domain"));
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
    if vh.require_tls != 0 {
        return Err(ctx.err(format!("{f}.require_tls"), "not supported"));
    }
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        routes.push(route_from_proto(ctx, &format!("{f}.routes[{i}]"), r)?);
    }
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains,
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
        } else if any.type_url.ends_with("envoy.config.route.v3.FilterConfig") {
            // An optional/disabled wrapper for a filter we do not run: nothing to apply.
            continue;
        } else {
            return Err(ctx.err(
                field,
                format!("per-route config for filter {name:?} is not supported (only {FAULT_FILTER})"),
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
        Some(route::Action::Redirect(rd)) => Action::Redirect(redirect(ctx, &format!("{f}.redirect"), rd)?),
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
    })
}

pub(crate) fn string_match(
    ctx: &Ctx,
    f: &str,
    m: &StringMatcher,
) -> Result<StringMatchCase, ConfigError> {
    let pattern = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => StringMatch::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(s.clone()),
        Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(s.clone()),
        Some(MatchPattern::Contains(s)) => StringMatch::Contains(s.clone()),
        Some(MatchPattern::SafeRegex(r)) => {
            let re = if m.ignore_case {
                format!("(?i:{})", r.regex)
            } else {
                r.regex.clone()
            };
            StringMatch::Regex(Pattern::full(ctx, &format!("{f}.safe_regex"), &re)?)
        }
        Some(MatchPattern::Custom(_)) => {
            return Err(ctx.err(f, "custom string matchers are not supported"))
        }
        None => return Err(ctx.err(f, "string matcher has no pattern")),
    };
    Ok(StringMatchCase {
        pattern,
        ignore_case: m.ignore_case,
    })
}

fn route_match(ctx: &Ctx, f: &str, m: &PbRouteMatch) -> Result<RouteMatch, ConfigError> {
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => {
            let re = if case_sensitive {
                r.regex.clone()
            } else {
                format!("(?i:{})", r.regex)
            };
            PathMatch::Regex(Pattern::full(ctx, &format!("{f}.safe_regex"), &re)?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            if p.contains(['?', '#']) || (p.len() > 1 && p.ends_with('/')) {
                return Err(ctx.err(
                    format!("{f}.path_separated_prefix"),
                    format!("{p:?} must not contain ?/# nor end with /"),
                ));
            }
            PathMatch::SeparatedPrefix(p.clone())
        }
        Some(PathSpecifier::ConnectMatcher(_)) | Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(ctx.err(f, "connect_matcher/path_match_policy are not supported"))
        }
        None => return Err(ctx.err(f, "a path specifier (prefix, path, safe_regex, path_separated_prefix) is required")),
    };
    if m.runtime_fraction.is_some() || !m.dynamic_metadata.is_empty() || m.tls_context.is_some() {
        return Err(ctx.err(
            f,
            "runtime_fraction, dynamic_metadata and tls_context matches are not supported",
        ));
    }
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_match(ctx, &format!("{f}.headers[{i}]"), h)?);
    }
    let mut query = Vec::new();
    for (i, q) in m.query_parameters.iter().enumerate() {
        let qf = format!("{f}.query_parameters[{i}]");
        let value = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => Some(string_match(ctx, &qf, s)?),
            Some(QueryParameterMatchSpecifier::PresentMatch(true)) | None => None,
            Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
                return Err(ctx.err(qf, "present_match: false is not supported"))
            }
        };
        query.push(QueryMatch {
            name: q.name.clone(),
            value,
        });
    }
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers,
        query,
        grpc: m.grpc.is_some(),
    })
}

#[allow(deprecated)] // Envoy's legacy header matchers are still sent by some control planes.
fn header_match(ctx: &Ctx, f: &str, h: &HeaderMatcher) -> Result<HeaderMatch, ConfigError> {
    let sm = |p: MatchPattern| StringMatchCase {
        pattern: match p {
            MatchPattern::Exact(s) => StringMatch::Exact(s),
            MatchPattern::Prefix(s) => StringMatch::Prefix(s),
            MatchPattern::Suffix(s) => StringMatch::Suffix(s),
            MatchPattern::Contains(s) => StringMatch::Contains(s),
            _ => StringMatch::Exact(String::new()),
        },
        ignore_case: false,
    };
    let kind = match &h.header_match_specifier {
        None => HeaderMatchKind::Present,
        Some(HeaderMatchSpecifier::PresentMatch(true)) => HeaderMatchKind::Present,
        Some(HeaderMatchSpecifier::PresentMatch(false)) => HeaderMatchKind::Absent,
        Some(HeaderMatchSpecifier::ExactMatch(s)) => HeaderMatchKind::Value(sm(MatchPattern::Exact(s.clone()))),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => HeaderMatchKind::Value(sm(MatchPattern::Prefix(s.clone()))),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => HeaderMatchKind::Value(sm(MatchPattern::Suffix(s.clone()))),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => HeaderMatchKind::Value(sm(MatchPattern::Contains(s.clone()))),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderMatchKind::Value(StringMatchCase {
            pattern: StringMatch::Regex(Pattern::full(ctx, &format!("{f}.safe_regex_match"), &r.regex)?),
            ignore_case: false,
        }),
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            HeaderMatchKind::Value(string_match(ctx, &format!("{f}.string_match"), s)?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(ctx.err(f, "range_match is not supported"))
        }
    };
    if h.name.is_empty() {
        return Err(ctx.err(format!("{f}.name"), "header name is empty"));
    }
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        kind,
        invert: h.invert_match,
    })
}

fn forward(ctx: &Ctx, f: &str, a: &RouteAction) -> Result<ForwardAction, ConfigError> {
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
        let per_million = match m.runtime_fraction.as_ref().and_then(|r| r.default_value.as_ref()) {
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
            _ => {
                return Err(ctx.err(
                    format!("{f}.hash_policy[{i}]"),
                    "only header, source_ip, query_parameter and cookie hash policies are supported",
                ))
            }
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

pub(crate) fn retry_policy(
    ctx: &Ctx,
    f: &str,
    p: &PbRetryPolicy,
) -> Result<RetryPolicy, ConfigError> {
    let mut on = RetryOn::default();
    for cond in p.retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
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
                format!("{:?} is not supported (only envoy.retry_host_predicates.previous_hosts)", h.name),
            ));
        }
    }
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
            let d = duration(ctx, &format!("{f}.per_try_timeout"), Some(d), Duration::ZERO)?;
            (!d.is_zero()).then_some(d)
        }
    };
    Ok(RetryPolicy {
        on,
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout,
        retriable_status_codes,
        previous_hosts,
    })
}

fn redirect(ctx: &Ctx, f: &str, r: &RedirectAction) -> Result<Redirect, ConfigError> {
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
        p => Some(u16::try_from(p).map_err(|_| {
            ctx.err(format!("{f}.port_redirect"), format!("{p} is not a port"))
        })?),
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
fn header_ops(
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
                return Err(ctx.err(format!("{hf}.header.key"), format!("{:?} is not a header name that can be set", h.key)));
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
                    Err(ctx.err(format!("{prefix}{field}[{i}]"), format!("{n:?} is not a header name")))
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
