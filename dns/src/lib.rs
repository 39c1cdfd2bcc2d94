//! Global DNS for ingress: an authoritative server for one delegated zone
//! whose global hostnames answer with the ingress gateway addresses of
//! healthy clusters, per hostname policy (failover, round robin, weighted,
//! geo by client subnet).
//!
//! The decision ([`decide::decide`]) is a pure function of the zone, the
//! health view and the query; the server ([`server::DnsServer`]) reads the
//! current `(zone, view)` pair from a `tokio::sync::watch` on every query
//! and never blocks on the control plane. The control plane builds the view
//! from its registry replica (see `control/src/app/dns.rs`).

#![forbid(unsafe_code)]

pub mod decide;
mod handler;
pub mod metrics;
pub mod server;
pub mod view;
pub mod zone;

pub use decide::{decide, preview, Answer, Client, Outcome, Pick};
pub use handler::DnsHandler;
pub use metrics::DnsMetrics;
pub use server::{DnsError, DnsServer, DnsServerConfig, MAX_UDP_PAYLOAD};
pub use view::{ClusterHealth, HealthView, Serving};
pub use zone::{HostnameSpec, NameServerSpec, Policy, Zone, ZoneError, ZoneSpec, DEFAULT_TTL};
