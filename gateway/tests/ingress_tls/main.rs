//! The ingress gateway end to end, configured by the control plane's own
//! translation of a Gateway, VirtualServices and core/v1 Secrets
//! (`credentialName`): TLS termination with a certificate per SNI host,
//! MUTUAL client verification against the Secret's CA, PASSTHROUGH to a
//! backend that terminates TLS itself, `httpsRedirect`, and a malformed
//! credential update that leaves the last good certificate in place.
//! Clients: rustls + hyper, and `curl` as an independent one.
//!
//! Modules: `pki` (user CA and leaves), `translation` (test YAML through the
//! control plane's translation), `harness` (scripted ADS and the passthrough
//! backend), `clients` (rustls/hyper and `curl`); tests in `end_to_end` (SNI,
//! MUTUAL, PASSTHROUGH, redirect, NACK, rotation) and `missing_credential`.

#[path = "../support/mod.rs"]
mod support;
#[path = "../translate_support/mod.rs"]
mod translate_support;

mod clients;
mod end_to_end;
mod harness;
mod missing_credential;
mod pki;
mod translation;
