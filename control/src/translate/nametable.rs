//! The DNS proxy's name table (Istio's NDS): every hostname a sidecar may
//! call, so its DNS proxy answers them locally — including services that
//! exist only in other clusters, which therefore need no local stub
//! Service — and forwards everything else upstream.
//!
//! In explicit-listener mode (no traffic capture) the answer is the
//! address the sidecar's outbound listeners bind, so the application's
//! connection to `name:port` lands on the sidecar's listener for that
//! port. Capturing sidecars would need service VIPs, which the service
//! model does not carry yet; they get no table entries.

use isthmus_gateway::dnsproxy::{NameInfo, NameTable};
use isthmus_xds::ProxyRole;

use super::services::Service;
use super::Context;
use crate::config::Location;

const CLUSTER_LOCAL: &str = ".svc.cluster.local";
const CLUSTERSET_LOCAL: &str = ".svc.clusterset.local";

/// The table for one proxy; empty for gateways and capturing sidecars.
pub fn for_proxy(ctx: &Context<'_>) -> NameTable {
    let mut table = NameTable::default();
    if ctx.role() != ProxyRole::Sidecar || super::listener::capture::captures(ctx) {
        return table;
    }
    let answer = ctx.proxy.outbound_bind.to_string();
    for svc in ctx.reachable_services() {
        if svc.hostname.starts_with('*') || svc.ports.is_empty() {
            continue;
        }
        table.table.insert(
            svc.hostname.clone(),
            NameInfo {
                ips: vec![answer.clone()],
                registry: registry(svc).to_string(),
                shortname: svc
                    .hostname
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                namespace: svc.namespace.clone(),
                alt_hosts: alt_hosts(&svc.hostname),
            },
        );
    }
    table
}

fn registry(svc: &Service) -> &'static str {
    if svc.location == Location::MeshExternal {
        "External"
    } else if svc.local.is_empty() && !svc.remote.is_empty() {
        "Remote"
    } else {
        "Kubernetes"
    }
}

/// `name.ns.svc.cluster.local` is also `name.ns.svc.clusterset.local`
/// (MCS namespace sameness).
fn alt_hosts(hostname: &str) -> Vec<String> {
    match hostname.strip_suffix(CLUSTER_LOCAL) {
        Some(base) => vec![format!("{base}{CLUSTERSET_LOCAL}")],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_local_names_get_their_clusterset_twin() {
        assert_eq!(
            alt_hosts("reviews.bookinfo.svc.cluster.local"),
            vec!["reviews.bookinfo.svc.clusterset.local".to_string()]
        );
        assert!(alt_hosts("api.example.com").is_empty());
    }
}
