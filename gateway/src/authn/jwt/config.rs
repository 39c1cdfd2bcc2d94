//! JwtAuthentication proto → validated providers and rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtProvider, JwtRequirement,
};
use envoy_types::pb::google::protobuf::Any;
use http::HeaderName;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Serialize;

use crate::config::common::unpack;
use crate::config::route_match::route_match;
use crate::config::{ConfigError, Ctx, RouteMatch};

pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// Envoy's default clock skew for `exp`/`nbf`.
const DEFAULT_CLOCK_SKEW_SECS: u32 = 60;

pub fn type_url() -> &'static str {
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
}

/// The parsed filter. Equality and the config dump use a summary that
/// includes each provider's JWK Set text, so a key rotation is a change.
#[derive(Debug)]
pub struct JwtAuthn {
    pub(super) rules: Vec<Rule>,
    pub(super) providers: Vec<Arc<Provider>>,
    pub(super) bypass_cors_preflight: bool,
    summary: serde_json::Value,
}

impl PartialEq for JwtAuthn {
    fn eq(&self, other: &Self) -> bool {
        self.summary == other.summary
    }
}

impl Eq for JwtAuthn {}

impl Serialize for JwtAuthn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.summary.serialize(s)
    }
}

#[derive(Debug)]
pub(super) struct Rule {
    pub(super) matcher: RouteMatch,
    pub(super) requirement: Requirement,
}

#[derive(Debug, Clone)]
pub(super) enum Requirement {
    Provider {
        provider: Arc<Provider>,
        /// Replaces the provider's audiences (`provider_and_audiences`).
        audiences: Option<Vec<String>>,
    },
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Passes when no token is present; a present but invalid token fails.
    AllowMissing,
    /// Always passes; a valid token is still verified and published.
    AllowMissingOrFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Location {
    Header { name: String, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Debug)]
pub(super) struct Provider {
    pub(super) name: String,
    pub(super) issuer: String,
    pub(super) audiences: Vec<String>,
    pub(super) keys: Vec<Key>,
    pub(super) locations: Vec<Location>,
    pub(super) forward: bool,
    pub(super) forward_payload_header: Option<HeaderName>,
    pub(super) pad_forward_payload_header: bool,
    pub(super) claim_to_headers: Vec<(HeaderName, String)>,
    pub(super) clock_skew_secs: u64,
    pub(super) require_expiration: bool,
}

pub(super) struct Key {
    pub(super) kid: Option<String>,
    /// `alg` from the JWK, when it names one.
    pub(super) alg: Option<Algorithm>,
    pub(super) params: AlgorithmParameters,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The key can verify a signature made with `alg`: the key type (and
    /// curve) fits the algorithm and the JWK's own `alg`, if any, agrees.
    pub(super) fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match &self.params {
            AlgorithmParameters::RSA(_) => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            AlgorithmParameters::EllipticCurve(p) => matches!(
                (&p.curve, alg),
                (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
            ),
            AlgorithmParameters::OctetKeyPair(p) => {
                p.curve == EllipticCurve::Ed25519 && alg == Algorithm::EdDSA
            }
            AlgorithmParameters::OctetKey(_) => {
                matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
            }
        }
    }
}

pub(crate) fn from_any(ctx: &Ctx, field: &str, any: &Any) -> Result<JwtAuthn, ConfigError> {
    let f = format!("{field}.typed_config");
    let pb: JwtAuthentication = unpack(ctx, &f, any)?;
    from_proto(ctx, &f, &pb)
}

pub(super) fn from_proto(
    ctx: &Ctx,
    f: &str,
    pb: &JwtAuthentication,
) -> Result<JwtAuthn, ConfigError> {
    if pb.filter_state_rules.is_some() {
        return Err(ctx.err(
            format!("{f}.filter_state_rules"),
            "filter_state_rules are not supported; use rules",
        ));
    }
    // Sorted so the summary (and error order) does not depend on map order.
    let sorted: BTreeMap<&String, &JwtProvider> = pb.providers.iter().collect();
    let mut providers = BTreeMap::new();
    let mut summaries = serde_json::Map::new();
    for (name, p) in sorted {
        let pf = format!("{f}.providers[{name:?}]");
        let (provider, summary) = provider(ctx, &pf, name, p)?;
        providers.insert(name.clone(), Arc::new(provider));
        summaries.insert(name.clone(), summary);
    }
    let mut named = BTreeMap::new();
    let sorted_req: BTreeMap<&String, &JwtRequirement> = pb.requirement_map.iter().collect();
    for (name, r) in sorted_req {
        let rf = format!("{f}.requirement_map[{name:?}]");
        named.insert(name.clone(), requirement(ctx, &rf, r, &providers)?);
    }
    let mut rules = Vec::new();
    for (i, r) in pb.rules.iter().enumerate() {
        let rf = format!("{f}.rules[{i}]");
        let m = r
            .r#match
            .as_ref()
            .ok_or_else(|| ctx.err(format!("{rf}.match"), "a rule needs a match"))?;
        let matcher = route_match(ctx, &format!("{rf}.match"), m)?;
        let requirement = match &r.requirement_type {
            Some(RequirementType::Requires(req)) => {
                requirement(ctx, &format!("{rf}.requires"), req, &providers)?
            }
            Some(RequirementType::RequirementName(n)) => {
                named.get(n).cloned().ok_or_else(|| {
                    ctx.err(
                        format!("{rf}.requirement_name"),
                        format!("{n:?} is not in requirement_map"),
                    )
                })?
            }
            // A rule without a requirement matches and verifies nothing.
            None => Requirement::AllowMissingOrFailed,
        };
        rules.push(Rule {
            matcher,
            requirement,
        });
    }
    let summary = serde_json::json!({
        "providers": summaries,
        "rules": rules.iter().map(|r| serde_json::json!({
            "match": r.matcher,
            "requires": requirement_summary(&r.requirement),
        })).collect::<Vec<_>>(),
        "bypass_cors_preflight": pb.bypass_cors_preflight,
    });
    Ok(JwtAuthn {
        rules,
        providers: providers.into_values().collect(),
        bypass_cors_preflight: pb.bypass_cors_preflight,
        summary,
    })
}

fn requirement_summary(r: &Requirement) -> serde_json::Value {
    match r {
        Requirement::Provider {
            provider,
            audiences,
        } => serde_json::json!({"provider": provider.name, "audiences": audiences}),
        Requirement::Any(v) => {
            serde_json::json!({"any": v.iter().map(requirement_summary).collect::<Vec<_>>()})
        }
        Requirement::All(v) => {
            serde_json::json!({"all": v.iter().map(requirement_summary).collect::<Vec<_>>()})
        }
        Requirement::AllowMissing => serde_json::json!("allow_missing"),
        Requirement::AllowMissingOrFailed => serde_json::json!("allow_missing_or_failed"),
    }
}

fn requirement(
    ctx: &Ctx,
    f: &str,
    r: &JwtRequirement,
    providers: &BTreeMap<String, Arc<Provider>>,
) -> Result<Requirement, ConfigError> {
    let lookup = |field: String, name: &str| {
        providers.get(name).cloned().ok_or_else(|| {
            ctx.err(
                field,
                format!("provider {name:?} is not defined in providers"),
            )
        })
    };
    let list = |field: &str, reqs: &[JwtRequirement]| -> Result<Vec<Requirement>, ConfigError> {
        if reqs.len() < 2 {
            return Err(ctx.err(field, "needs at least two requirements"));
        }
        reqs.iter()
            .enumerate()
            .map(|(i, r)| requirement(ctx, &format!("{field}[{i}]"), r, providers))
            .collect()
    };
    Ok(match &r.requires_type {
        Some(RequiresType::ProviderName(n)) => Requirement::Provider {
            provider: lookup(format!("{f}.provider_name"), n)?,
            audiences: None,
        },
        Some(RequiresType::ProviderAndAudiences(pa)) => Requirement::Provider {
            provider: lookup(
                format!("{f}.provider_and_audiences.provider_name"),
                &pa.provider_name,
            )?,
            audiences: Some(pa.audiences.clone()),
        },
        Some(RequiresType::RequiresAny(l)) => Requirement::Any(list(
            &format!("{f}.requires_any.requirements"),
            &l.requirements,
        )?),
        Some(RequiresType::RequiresAll(l)) => Requirement::All(list(
            &format!("{f}.requires_all.requirements"),
            &l.requirements,
        )?),
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err(ctx.err(
                format!("{f}.extract_only_without_validation"),
                "extracting unverified tokens is not supported",
            ))
        }
        None => return Err(ctx.err(f, "empty requirement")),
    })
}

fn header_name(ctx: &Ctx, field: String, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ctx.err(field, format!("{name:?} is not a valid header name")))
}

fn provider(
    ctx: &Ctx,
    f: &str,
    name: &str,
    p: &JwtProvider,
) -> Result<(Provider, serde_json::Value), ConfigError> {
    let unsupported = |field: &str, what: &str| {
        ctx.err(format!("{f}.{field}"), format!("{what} is not supported"))
    };
    if p.subjects.is_some() {
        return Err(unsupported("subjects", "subject matching"));
    }
    if p.max_lifetime.is_some() {
        return Err(unsupported("max_lifetime", "max_lifetime"));
    }
    let jwks = match &p.jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(ds)) => match &ds.specifier {
            Some(Specifier::InlineString(s)) => s.clone(),
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).map_err(|_| {
                ctx.err(format!("{f}.local_jwks.inline_bytes"), "is not UTF-8")
            })?,
            _ => {
                return Err(ctx.err(
                    format!("{f}.local_jwks"),
                    "only inline_string or inline_bytes JWKS are supported",
                ))
            }
        },
        Some(JwksSourceSpecifier::RemoteJwks(_)) => {
            return Err(ctx.err(
                format!("{f}.remote_jwks"),
                "remote_jwks is not fetched by the data plane; the control plane resolves jwksUri and sends local_jwks",
            ))
        }
        None => {
            return Err(ctx.err(
                format!("{f}.jwks_source_specifier"),
                "local_jwks is required",
            ))
        }
    };
    let keys = parse_jwks(&jwks).map_err(|why| ctx.err(format!("{f}.local_jwks"), why))?;
    let mut locations = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        let hn = header_name(ctx, format!("{f}.from_headers[{i}].name"), &h.name)?;
        locations.push(Location::Header {
            name: hn.as_str().to_string(),
            prefix: h.value_prefix.clone(),
        });
    }
    locations.extend(p.from_params.iter().cloned().map(Location::Param));
    locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        // Envoy's default: `Authorization: Bearer <token>`, `?access_token=`.
        locations.push(Location::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        });
        locations.push(Location::Param("access_token".into()));
    }
    let forward_payload_header = match p.forward_payload_header.as_str() {
        "" => None,
        h => Some(header_name(ctx, format!("{f}.forward_payload_header"), h)?),
    };
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        if c.claim_name.is_empty() {
            return Err(ctx.err(format!("{f}.claim_to_headers[{i}].claim_name"), "empty"));
        }
        let hn = header_name(
            ctx,
            format!("{f}.claim_to_headers[{i}].header_name"),
            &c.header_name,
        )?;
        claim_to_headers.push((hn, c.claim_name.clone()));
    }
    let clock_skew = if p.clock_skew_seconds == 0 {
        DEFAULT_CLOCK_SKEW_SECS
    } else {
        p.clock_skew_seconds
    };
    let summary = serde_json::json!({
        "issuer": p.issuer,
        "audiences": p.audiences,
        "jwks": jwks,
        "locations": locations,
        "forward": p.forward,
        "forward_payload_header": p.forward_payload_header,
        "pad_forward_payload_header": p.pad_forward_payload_header,
        "payload_in_metadata": p.payload_in_metadata,
        "claim_to_headers": p.claim_to_headers.iter().map(|c| (&c.header_name, &c.claim_name)).collect::<Vec<_>>(),
        "clock_skew_seconds": clock_skew,
        "require_expiration": p.require_expiration,
    });
    Ok((
        Provider {
            name: name.to_string(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            keys,
            locations,
            forward: p.forward,
            forward_payload_header,
            pad_forward_payload_header: p.pad_forward_payload_header,
            claim_to_headers,
            clock_skew_secs: u64::from(clock_skew),
            require_expiration: p.require_expiration,
        },
        summary,
    ))
}

/// Parses a JWK Set. Keys of a kind we cannot use are skipped (as Envoy
/// does) as long as one usable key remains.
pub(super) fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("JWKS must be a JSON object with a \"keys\" array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(entry.clone()) {
            Ok(j) => j,
            Err(e) => {
                skipped.push(format!("keys[{i}]: {e}"));
                continue;
            }
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(k) => k,
            Err(e) => {
                skipped.push(format!("keys[{i}]: {e}"));
                continue;
            }
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            params: jwk.algorithm.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!(
            "JWKS has no usable key ({})",
            if skipped.is_empty() {
                "the keys array is empty".to_string()
            } else {
                skipped.join("; ")
            }
        ));
    }
    if !skipped.is_empty() {
        tracing::debug!(skipped = ?skipped, "JWKS keys skipped");
    }
    Ok(keys)
}
