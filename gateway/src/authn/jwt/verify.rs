//! Verifying tokens against providers and evaluating requirement trees
//! with Envoy's semantics.

use std::collections::HashSet;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Validation};
use serde_json::Value;

use super::config::{Location, Provider, Requirement};

/// Why a requirement failed; the message is Envoy's local reply body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    #[error("Jwt verification fails")]
    BadSignature,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt doesn't have an expiration time")]
    NoExpiration,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
}

impl Failure {
    /// Envoy answers 403 for a wrong audience and 401 for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Where a token was found in the request.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub(super) token: String,
    pub(super) location: Location,
}

/// A token that passed a provider's checks.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub(super) provider: Arc<Provider>,
    pub(super) found: Found,
    pub(super) claims: Value,
    /// The token's payload segment as sent (base64url).
    pub(super) payload_b64: String,
}

/// What a request offers: its headers and query string.
pub(super) struct RequestView<'a> {
    pub(super) headers: &'a HeaderMap,
    pub(super) query: Option<&'a str>,
}

impl RequestView<'_> {
    fn extract(&self, locations: &[Location]) -> Vec<Found> {
        let mut out = Vec::new();
        for loc in locations {
            match loc {
                Location::Header { name, prefix } => {
                    for v in self.headers.get_all(name.as_str()) {
                        let Ok(v) = v.to_str() else { continue };
                        if let Some(t) = strip_prefix(v, prefix) {
                            out.push(Found {
                                token: t,
                                location: loc.clone(),
                            });
                        }
                    }
                }
                Location::Param(p) => {
                    let Some(q) = self.query else { continue };
                    for pair in q.split('&') {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        if k == p && !v.is_empty() {
                            out.push(Found {
                                token: v.to_string(),
                                location: loc.clone(),
                            });
                        }
                    }
                }
                Location::Cookie(c) => {
                    for v in self.headers.get_all(http::header::COOKIE) {
                        let Ok(v) = v.to_str() else { continue };
                        for kv in v.split(';') {
                            let (k, v) = kv.trim().split_once('=').unwrap_or((kv, ""));
                            if k == c && !v.is_empty() {
                                out.push(Found {
                                    token: v.to_string(),
                                    location: loc.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// The token after `prefix` (compared case-insensitively, as Envoy does for
/// `Bearer `), up to the first character a JWT cannot contain.
fn strip_prefix(value: &str, prefix: &str) -> Option<String> {
    let rest = if prefix.is_empty() {
        value
    } else {
        let head = value.get(..prefix.len())?;
        if !head.eq_ignore_ascii_case(prefix) {
            return None;
        }
        &value[prefix.len()..]
    };
    let token: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '='))
        .collect();
    (!token.is_empty()).then_some(token)
}

fn unverified_issuer(token: &str) -> Result<(String, String), Failure> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Failure::Malformed)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| Failure::Malformed)?;
    let iss = v
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((iss, payload.to_string()))
}

/// Verifies one token for one provider: issuer, key (by `kid` and `alg`),
/// signature, time window, audiences.
fn verify_token(
    provider: &Arc<Provider>,
    audiences: &[String],
    found: Found,
) -> Result<Verified, Failure> {
    let (iss, payload_b64) = unverified_issuer(&found.token)?;
    if !provider.issuer.is_empty() && iss != provider.issuer {
        return Err(Failure::UnknownIssuer);
    }
    let header = decode_header(&found.token).map_err(|_| Failure::Malformed)?;
    let candidates: Vec<_> = provider
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        .filter(|k| k.accepts(header.alg))
        .collect();
    if candidates.is_empty() {
        return Err(Failure::NoMatchingKey);
    }
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims = HashSet::new();
    validation.leeway = provider.clock_skew_secs;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let mut last = Failure::BadSignature;
    for key in candidates {
        match decode::<Value>(&found.token, &key.key, &validation) {
            Ok(data) => {
                let claims = data.claims;
                check_expiration(&claims, provider)?;
                check_audiences(&claims, audiences)?;
                return Ok(Verified {
                    provider: provider.clone(),
                    found,
                    claims,
                    payload_b64,
                });
            }
            Err(e) => {
                last = match e.kind() {
                    ErrorKind::ExpiredSignature => Failure::Expired,
                    ErrorKind::ImmatureSignature => Failure::NotYetValid,
                    ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                        Failure::Malformed
                    }
                    _ => Failure::BadSignature,
                };
                // Only a signature mismatch is worth trying the next key for.
                if last != Failure::BadSignature {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// `jsonwebtoken` checked `exp`/`nbf` when present (with the provider's
/// leeway); this adds `require_expiration`.
fn check_expiration(claims: &Value, provider: &Provider) -> Result<(), Failure> {
    if provider.require_expiration && claims.get("exp").is_none() {
        return Err(Failure::NoExpiration);
    }
    Ok(())
}

fn check_audiences(claims: &Value, allowed: &[String]) -> Result<(), Failure> {
    if allowed.is_empty() {
        return Ok(());
    }
    let norm = |s: &str| s.trim_end_matches('/').to_string();
    let allowed: HashSet<String> = allowed.iter().map(|a| norm(a)).collect();
    let ok = match claims.get("aud") {
        Some(Value::String(a)) => allowed.contains(&norm(a)),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| allowed.contains(&norm(a))),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Failure::AudienceNotAllowed)
    }
}

fn verify_provider(
    provider: &Arc<Provider>,
    audiences: Option<&[String]>,
    req: &RequestView<'_>,
) -> Result<Verified, Failure> {
    let found = req.extract(&provider.locations);
    if found.is_empty() {
        return Err(Failure::Missing);
    }
    let audiences = audiences.unwrap_or(&provider.audiences);
    let mut first_err = None;
    for f in found {
        match verify_token(provider, audiences, f) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(Failure::Missing))
}

/// Evaluates a requirement. `Ok` carries the tokens that verified (empty
/// when the requirement passed without one).
pub(super) fn evaluate(
    r: &Requirement,
    all_providers: &[Arc<Provider>],
    req: &RequestView<'_>,
) -> Result<Vec<Verified>, Failure> {
    match r {
        Requirement::Provider {
            provider,
            audiences,
        } => verify_provider(provider, audiences.as_deref(), req).map(|v| vec![v]),
        Requirement::All(list) => {
            let mut out = Vec::new();
            for r in list {
                out.extend(evaluate(r, all_providers, req)?);
            }
            Ok(out)
        }
        Requirement::Any(list) => {
            let allow_missing = list.iter().any(|r| matches!(r, Requirement::AllowMissing));
            let allow_failed = list
                .iter()
                .any(|r| matches!(r, Requirement::AllowMissingOrFailed));
            let mut failure: Option<Failure> = None;
            for r in list {
                if matches!(
                    r,
                    Requirement::AllowMissing | Requirement::AllowMissingOrFailed
                ) {
                    continue;
                }
                match evaluate(r, all_providers, req) {
                    Ok(v) => return Ok(v),
                    // A token that failed is the error to report over a
                    // provider that simply found no token.
                    Err(e) => {
                        if failure.as_ref().is_none_or(|f| *f == Failure::Missing) {
                            failure = Some(e);
                        }
                    }
                }
            }
            match failure {
                None => Ok(Vec::new()),
                Some(_) if allow_failed => Ok(Vec::new()),
                Some(Failure::Missing) if allow_missing => Ok(Vec::new()),
                Some(e) => Err(e),
            }
        }
        // On their own these verify any token any provider recognises.
        Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
            let any = Requirement::Any(
                all_providers
                    .iter()
                    .map(|p| Requirement::Provider {
                        provider: p.clone(),
                        audiences: None,
                    })
                    .chain(std::iter::once(r.clone()))
                    .collect(),
            );
            if all_providers.is_empty() {
                return Ok(Vec::new());
            }
            evaluate(&any, all_providers, req)
        }
    }
}
