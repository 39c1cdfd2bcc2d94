//! RequestAuthentication → `envoy.filters.http.jwt_authn`, and the
//! `isthmus.io/local-rate-limit` annotation → `envoy.filters.http.local_ratelimit`,
//! on a sidecar's inbound HTTP connection managers.
//!
//! The JWT config has Istio's shape: one provider `origins-N` per jwtRule,
//! one rule for `/` requiring any provider or a missing token (a missing
//! token is for AuthorizationPolicy to judge), claims published under the
//! issuer (`payload_in_metadata`). `jwksUri` is resolved by the control
//! plane (`crate::app::jwks`) and sent inline as `local_jwks`, as Istio's
//! pilot does; a key set not fetched yet becomes a key set no token
//! verifies against, so the rule fails closed for tokens that are present.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider,
    JwtRequirement, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::r#type::v3::{
    fractional_percent::DenominatorType, FractionalPercent, TokenBucket,
};
use envoy_types::pb::google::protobuf::{Empty, UInt32Value};

use crate::config::{labels_match, JwtRule, Object, RequestAuthenticationSpec};
use crate::store::ConfigSnapshot;

use super::proto::any;
use super::Context;

pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
pub const LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
/// Annotation on a ServiceEntry (or Kubernetes Service): a token bucket per
/// workload on the service's inbound ports, `N/INTERVAL[,burst=M]`, e.g.
/// `100/1s` or `10/1m,burst=20`.
pub const RATE_LIMIT_ANNOTATION: &str = "isthmus.io/local-rate-limit";

/// A key set no signature verifies against (a P-256 point that is not a
/// key anyone holds), for a `jwksUri` not fetched yet.
pub const UNRESOLVED_JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"isthmus-unresolved-jwks","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;

/// JWK Sets fetched from `jwksUri`s, by URI (`crate::app::jwks` fills it).
pub type ResolvedJwks = BTreeMap<String, String>;

/// The RequestAuthentications that apply to a workload, as Istio merges
/// them: mesh-wide (root namespace, no selector), namespace-wide, and those
/// selecting its labels in its namespace.
pub fn request_authentications<'a>(
    config: &'a ConfigSnapshot,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Object<RequestAuthenticationSpec>> {
    config
        .request_authentications()
        .filter(|ra| {
            let ns = ra.namespace();
            let selector = ra
                .spec
                .selector
                .as_ref()
                .filter(|s| !s.match_labels.is_empty());
            match selector {
                None => ns == namespace || ns == root_namespace,
                Some(s) => ns == namespace && labels_match(&s.match_labels, labels),
            }
        })
        .collect()
}

/// The jwt_authn filter for a workload, `None` without any jwtRule.
pub fn jwt_filter(rules: &[&JwtRule], jwks: &ResolvedJwks) -> Option<JwtAuthentication> {
    if rules.is_empty() {
        return None;
    }
    let mut providers = std::collections::HashMap::new();
    let mut any_of = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        providers.insert(name.clone(), provider(rule, jwks));
        any_of.push(requirement(RequiresType::ProviderName(name)));
    }
    any_of.push(requirement(RequiresType::AllowMissing(Empty {})));
    Some(JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(requirement(
                RequiresType::RequiresAny(JwtRequirementOrList {
                    requirements: any_of,
                }),
            ))),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    })
}

fn requirement(r: RequiresType) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(r),
    }
}

fn provider(rule: &JwtRule, jwks: &ResolvedJwks) -> JwtProvider {
    let key_set = match (&rule.jwks, &rule.jwks_uri) {
        (Some(inline), _) => inline.clone(),
        (None, Some(uri)) => jwks
            .get(uri)
            .cloned()
            .unwrap_or_else(|| UNRESOLVED_JWKS.to_string()),
        (None, None) => UNRESOLVED_JWKS.to_string(),
    };
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token.unwrap_or(false),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: rule.issuer.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(key_set)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A parsed `isthmus.io/local-rate-limit` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSpec {
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub max_tokens: u32,
}

/// Parses `N/INTERVAL[,burst=M]`; the error says what is wrong.
pub fn parse_rate_limit(value: &str) -> Result<RateLimitSpec, String> {
    let mut parts = value.split(',').map(str::trim);
    let rate = parts.next().unwrap_or_default();
    let (n, interval) = rate
        .split_once('/')
        .ok_or_else(|| format!("{value:?}: expected N/INTERVAL, e.g. 100/1s"))?;
    let tokens_per_fill: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{value:?}: {n:?} is not a positive number of requests"))?;
    let fill_interval = crate::config::Duration::parse(interval.trim())
        .map(|d| d.as_std())
        .map_err(|e| format!("{value:?}: interval {interval:?}: {e}"))?;
    if fill_interval < Duration::from_millis(50) {
        return Err(format!("{value:?}: the interval must be at least 50ms"));
    }
    let mut max_tokens = tokens_per_fill;
    for p in parts {
        match p.split_once('=') {
            Some(("burst", b)) => {
                max_tokens = b
                    .trim()
                    .parse()
                    .ok()
                    .filter(|b| *b >= tokens_per_fill)
                    .ok_or_else(|| {
                        format!(
                            "{value:?}: burst {b:?} must be a number of at least {tokens_per_fill}"
                        )
                    })?;
            }
            _ => return Err(format!("{value:?}: unknown option {p:?} (only burst=N)")),
        }
    }
    Ok(RateLimitSpec {
        tokens_per_fill,
        fill_interval,
        max_tokens,
    })
}

fn hundred_percent() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    })
}

pub fn local_ratelimit(stat_prefix: &str, spec: RateLimitSpec) -> LocalRateLimit {
    LocalRateLimit {
        stat_prefix: stat_prefix.to_string(),
        token_bucket: Some(TokenBucket {
            max_tokens: spec.max_tokens,
            tokens_per_fill: Some(UInt32Value {
                value: spec.tokens_per_fill,
            }),
            fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: spec.fill_interval.as_secs() as i64,
                nanos: spec.fill_interval.subsec_nanos() as i32,
            }),
        }),
        filter_enabled: hundred_percent(),
        filter_enforced: hundred_percent(),
        // DRAFT_VERSION_03: x-ratelimit-limit / -remaining / -reset.
        enable_x_ratelimit_headers: 1,
        ..Default::default()
    }
}

/// The rate limit for a workload's inbound port: the annotation of a
/// mesh-internal ServiceEntry in its namespace that selects it and has the
/// port as a target port (the first by name when several do).
fn rate_limit_for(ctx: &Context<'_>, port: u16) -> Option<RateLimitSpec> {
    ctx.inputs.config.service_entries().find_map(|se| {
        let value = se.metadata.annotations.get(RATE_LIMIT_ANNOTATION)?;
        if se.namespace() != ctx.proxy.namespace {
            return None;
        }
        let selects =
            se.spec.workload_selector.as_ref().is_some_and(|s| {
                !s.labels.is_empty() && labels_match(&s.labels, &ctx.proxy.labels)
            });
        let serves = se.spec.ports.iter().any(|p| {
            let target = p.target_port.unwrap_or(p.number);
            u32::from(port) == target
        });
        if !selects || !serves {
            return None;
        }
        match parse_rate_limit(value) {
            Ok(spec) => Some(spec),
            Err(why) => {
                tracing::warn!(
                    service_entry = %format!("{}/{}", se.namespace(), se.name()),
                    annotation = RATE_LIMIT_ANNOTATION,
                    %why,
                    "ignoring an invalid rate limit annotation"
                );
                None
            }
        }
    })
}

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// Adds this module's filters to an inbound connection manager: jwt_authn
/// first (before RBAC, which reads the verified token) and local_ratelimit
/// just before the router.
pub fn add_inbound_filters(ctx: &Context<'_>, port: u16, hcm: &mut HttpConnectionManager) {
    let policies = request_authentications(
        &ctx.inputs.config,
        &ctx.inputs.local.root_namespace,
        &ctx.proxy.namespace,
        &ctx.proxy.labels,
    );
    let rules: Vec<&JwtRule> = policies.iter().flat_map(|p| &p.spec.jwt_rules).collect();
    if let Some(jwt) = jwt_filter(&rules, &ctx.inputs.jwks) {
        hcm.http_filters.insert(0, http_filter(JWT_AUTHN, any(jwt)));
    }
    if let Some(spec) = rate_limit_for(ctx, port) {
        let at = hcm.http_filters.len().saturating_sub(1);
        hcm.http_filters.insert(
            at,
            http_filter(
                LOCAL_RATELIMIT,
                any(local_ratelimit("http_local_rate_limiter", spec)),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_annotation() {
        assert_eq!(
            parse_rate_limit("100/1s"),
            Ok(RateLimitSpec {
                tokens_per_fill: 100,
                fill_interval: Duration::from_secs(1),
                max_tokens: 100
            })
        );
        assert_eq!(
            parse_rate_limit("10/1m, burst=20").map(|s| (s.max_tokens, s.fill_interval)),
            Ok((20, Duration::from_secs(60)))
        );
        for bad in [
            "100",
            "0/1s",
            "x/1s",
            "5/10ms",
            "5/1s,burst=2",
            "5/1s,foo=1",
        ] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn istio_shape_and_unresolved_keys() {
        let rule = JwtRule {
            issuer: "testing@secure.istio.io".into(),
            jwks_uri: Some("https://example.com/jwks.json".into()),
            output_payload_to_header: Some("x-jwt".into()),
            ..Default::default()
        };
        let jwt = jwt_filter(&[&rule], &ResolvedJwks::new()).expect("filter");
        let p = &jwt.providers["origins-0"];
        assert_eq!(p.payload_in_metadata, "testing@secure.istio.io");
        assert_eq!(p.forward_payload_header, "x-jwt");
        let Some(JwksSourceSpecifier::LocalJwks(ds)) = &p.jwks_source_specifier else {
            panic!("local_jwks expected");
        };
        assert_eq!(
            ds.specifier,
            Some(data_source::Specifier::InlineString(UNRESOLVED_JWKS.into()))
        );
        let Some(RequirementType::Requires(r)) = &jwt.rules[0].requirement_type else {
            panic!("requires expected");
        };
        let Some(RequiresType::RequiresAny(list)) = &r.requires_type else {
            panic!("requires_any expected");
        };
        assert!(matches!(
            list.requirements
                .last()
                .and_then(|r| r.requires_type.as_ref()),
            Some(RequiresType::AllowMissing(_))
        ));
        let resolved: ResolvedJwks = [(
            "https://example.com/jwks.json".to_string(),
            "{\"keys\":[]}".to_string(),
        )]
        .into();
        let jwt = jwt_filter(&[&rule], &resolved).expect("filter");
        let Some(JwksSourceSpecifier::LocalJwks(ds)) =
            &jwt.providers["origins-0"].jwks_source_specifier
        else {
            panic!("local_jwks expected");
        };
        assert_eq!(
            ds.specifier,
            Some(data_source::Specifier::InlineString("{\"keys\":[]}".into()))
        );
    }
}
