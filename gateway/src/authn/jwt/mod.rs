//! `envoy.filters.http.jwt_authn`: providers (issuer, audiences, an inline
//! JWK Set, where the token is read from and what is forwarded), rules that
//! pick a requirement by route match, and the requirement tree (provider,
//! any, all, allow_missing, allow_missing_or_failed).
//!
//! `config` parses the proto, `verify` checks one token against one
//! provider with `jsonwebtoken` (signatures are never checked by hand) and
//! evaluates requirements, `filter` edits the request on success.

mod config;
mod filter;
mod verify;

pub(crate) use config::from_any;
pub use config::{type_url, JwtAuthn, JWT_AUTHN_FILTER};
pub use filter::authenticate;
pub use verify::Failure;

#[cfg(test)]
mod tests;
