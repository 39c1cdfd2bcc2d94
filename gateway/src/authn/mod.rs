//! Request authentication and admission control in the HTTP connection
//! manager: `envoy.filters.http.jwt_authn` (JWT validation, [`jwt`]) and
//! `envoy.filters.http.local_ratelimit` (token buckets, [`ratelimit`]).
//!
//! The connection manager runs them in Istio's inbound order:
//! jwt_authn → rbac → local_ratelimit → fault → router. Both filters are
//! configured only through xDS; the control plane resolves `jwksUri` and
//! sends the key set inline (`local_jwks`), so the data plane never fetches
//! keys on the request path.

pub mod jwt;
pub mod ratelimit;

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use crate::config::{ConfigError, Ctx};

pub use jwt::{JwtAuthn, JWT_AUTHN_FILTER};
pub use ratelimit::{RateLimiter, LOCAL_RATELIMIT_FILTER};

/// The JWT that `jwt_authn` verified for this request, attached as a
/// request extension (`req.extensions().get::<VerifiedJwt>()`) before RBAC
/// runs. Absent when the request carried no token, or when the token failed
/// under an `allow_missing_or_failed` requirement.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJwt {
    /// `iss/sub`: Istio's `request.auth.principal`, what
    /// `requestPrincipals` matches.
    pub principal: String,
    /// The whole verified payload: `request.auth.claims[...]` reads it.
    /// Envoy puts the same object in dynamic metadata under the provider's
    /// `payload_in_metadata` key (the issuer, as Istio configures it).
    pub claims: serde_json::Value,
}

/// Serializes an optional shared filter config for the config dump.
pub(crate) fn ser_opt_arc<T: serde::Serialize, S: serde::Serializer>(
    v: &Option<Arc<T>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&v.as_deref(), s)
}

/// One of this module's HTTP filters, parsed from the HCM's filter list.
#[derive(Debug, Clone)]
pub(crate) enum AuthnFilter {
    Jwt(Arc<JwtAuthn>),
    RateLimit(Arc<RateLimiter>),
}

/// Parses an HTTP filter if it is `jwt_authn` or `local_ratelimit` (by
/// name or type URL); `Ok(None)` for any other filter.
pub(crate) fn http_filter(
    ctx: &Ctx,
    field: &str,
    name: &str,
    any: Option<&Any>,
) -> Result<Option<AuthnFilter>, ConfigError> {
    let type_url = any.map(|a| a.type_url.as_str()).unwrap_or("");
    if name == JWT_AUTHN_FILTER || type_url == jwt::type_url() {
        let Some(any) = any else {
            return Err(ctx.err(field, "jwt_authn needs a typed_config (JwtAuthentication)"));
        };
        return Ok(Some(AuthnFilter::Jwt(Arc::new(jwt::from_any(
            ctx, field, any,
        )?))));
    }
    if name == LOCAL_RATELIMIT_FILTER || type_url == ratelimit::type_url() {
        let limiter = match any {
            Some(any) => ratelimit::from_any(ctx, &format!("{field}.typed_config"), any)?,
            None => RateLimiter::default(),
        };
        return Ok(Some(AuthnFilter::RateLimit(Arc::new(limiter))));
    }
    Ok(None)
}
