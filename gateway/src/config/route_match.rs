//! Request matchers of a route: path, headers, query parameters and the
//! string matchers they share, converted from Envoy's `RouteMatch`,
//! `HeaderMatcher` and `StringMatcher` (also used by RBAC and JWT rules).

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route_match::PathSpecifier, HeaderMatcher, RouteMatch as PbRouteMatch,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use serde::Serialize;

use super::{ConfigError, Ctx};

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
        let eq = |a: &str, b: &str| {
            if ic {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.pattern {
            StringMatch::Exact(s) => eq(v, s),
            StringMatch::Prefix(s) => {
                v.len() >= s.len() && v.is_char_boundary(s.len()) && eq(&v[..s.len()], s)
            }
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

pub(crate) fn route_match(ctx: &Ctx, f: &str, m: &PbRouteMatch) -> Result<RouteMatch, ConfigError> {
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let path =
        match &m.path_specifier {
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
            None => return Err(ctx.err(
                f,
                "a path specifier (prefix, path, safe_regex, path_separated_prefix) is required",
            )),
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
pub(crate) fn header_match(
    ctx: &Ctx,
    f: &str,
    h: &HeaderMatcher,
) -> Result<HeaderMatch, ConfigError> {
    if h.name.is_empty() {
        return Err(ctx.err(format!("{f}.name"), "header name is empty"));
    }
    let plain = |p: StringMatch| {
        HeaderMatchKind::Value(StringMatchCase {
            pattern: p,
            ignore_case: false,
        })
    };
    let kind =
        match &h.header_match_specifier {
            None | Some(HeaderMatchSpecifier::PresentMatch(true)) => HeaderMatchKind::Present,
            Some(HeaderMatchSpecifier::PresentMatch(false)) => HeaderMatchKind::Absent,
            Some(HeaderMatchSpecifier::ExactMatch(s)) => plain(StringMatch::Exact(s.clone())),
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => plain(StringMatch::Prefix(s.clone())),
            Some(HeaderMatchSpecifier::SuffixMatch(s)) => plain(StringMatch::Suffix(s.clone())),
            Some(HeaderMatchSpecifier::ContainsMatch(s)) => plain(StringMatch::Contains(s.clone())),
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => plain(StringMatch::Regex(
                Pattern::full(ctx, &format!("{f}.safe_regex_match"), &r.regex)?,
            )),
            Some(HeaderMatchSpecifier::StringMatch(s)) => {
                HeaderMatchKind::Value(string_match(ctx, &format!("{f}.string_match"), s)?)
            }
            Some(HeaderMatchSpecifier::RangeMatch(_)) => {
                return Err(ctx.err(f, "range_match is not supported"))
            }
        };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        kind,
        invert: h.invert_match,
    })
}
