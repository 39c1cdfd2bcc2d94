//! The east-west gateway: one listener on 15443 that reads the SNI of
//! still-encrypted connections (Istio's AUTO_PASSTHROUGH) and forwards each
//! to the SNI-named cluster of local endpoints. It never terminates TLS and
//! never holds workload keys.

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};

use super::super::cluster::eastwest_targets;
use super::super::proto::socket_address;
use super::super::Context;
use super::{tcp_proxy_filter, tls_inspector};

pub const EASTWEST_PORT: u16 = 15443;
pub const EASTWEST_LISTENER: &str = "0.0.0.0_15443";

pub fn listeners(ctx: &Context<'_>) -> Vec<Listener> {
    let mut chains: Vec<FilterChain> = eastwest_targets(ctx)
        .iter()
        .map(|t| FilterChain {
            name: t.name.clone(),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![t.name.clone()],
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(&t.name, &t.name)],
            ..Default::default()
        })
        .collect();
    chains.sort_by(|a, b| a.name.cmp(&b.name));
    chains.dedup_by(|a, b| a.name == b.name);
    let mut out = Vec::new();
    // Envoy rejects a listener without filter chains; nothing exported yet
    // means nothing to listen for.
    if !chains.is_empty() {
        out.push(Listener {
            name: EASTWEST_LISTENER.to_string(),
            address: Some(socket_address(&ctx.proxy.ip.to_string(), EASTWEST_PORT)),
            listener_filters: vec![tls_inspector()],
            filter_chains: chains,
            ..Default::default()
        });
    }
    out.extend(super::super::tunnel::listener(ctx));
    out
}
