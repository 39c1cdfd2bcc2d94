//! Tracing and access logs through real gateways: a client-side gateway
//! (outbound listener, client spans) in front of a server-side one
//! (`inbound|…` listener, server spans) in front of an app that records the
//! headers it got, with spans exported over OTLP/gRPC to a receiver in the
//! test and access logs written to files.
//!
//! `harness` starts the app and the two-gateway chain, `config` builds the
//! tracing and access-log xDS resources, and the tests are grouped in
//! `spans` (one trace across two hops), `propagation` (W3C/B3 headers and
//! sampling) and `access_logs` (HTTP and TCP access log lines).

#[path = "../support/otlp.rs"]
mod otlp;
#[path = "../support/mod.rs"]
mod support;

mod access_logs;
mod config;
mod harness;
mod propagation;
mod spans;
