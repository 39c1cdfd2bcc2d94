//! Joins the configuration snapshot and the registry replica into
//! translation inputs, and tells the xDS server what to push.
//!
//! Pushes are scoped by what actually changed between two inputs: most
//! changes in a federation are endpoints (a workload scaled, a remote
//! cluster's health flipped, a lease expired), and those only need EDS for
//! the clusters of the affected services, which the xDS server sends only to
//! the proxies subscribed to them.

use std::collections::BTreeSet;
use std::sync::Arc;

use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{PushScope, Pusher, TypeUrl};
use tokio::sync::watch;
use tracing::debug;

use crate::config::host::{host_matches, resolve_fqdn};
use crate::config::{Kind, Resolution};
use crate::store::ConfigSnapshot;
use crate::translate::authn::ResolvedJwks;
use crate::translate::naming::{outbound_cluster, outbound_sni};
use crate::translate::services::{Instance, RemoteInstances};
use crate::translate::{secret, Inputs, LocalSettings, Service};

#[cfg(test)]
pub fn build(
    config: &Arc<ConfigSnapshot>,
    registry: &Arc<RegistrySnapshot>,
    root_pem: &str,
) -> Inputs {
    build_with_roots(config, registry, &[root_pem.to_string()])
}

/// Like [`build`], with every root of this cluster's root-cert.pem (during
/// a root rotation, the old and the new one).
pub fn build_with_roots(
    config: &Arc<ConfigSnapshot>,
    registry: &Arc<RegistrySnapshot>,
    roots: &[String],
) -> Inputs {
    let local = LocalSettings::from_config(config, roots.to_vec());
    Inputs::new(config.clone(), registry.clone(), local)
}

/// Rebuilds the inputs whenever either side changes and pushes what the
/// change affects. The push version is a counter of rebuilds, so every
/// proxy can tell which inputs it has seen.
pub async fn run(
    mut config: watch::Receiver<Arc<ConfigSnapshot>>,
    mut registry: watch::Receiver<Arc<RegistrySnapshot>>,
    mut jwks: watch::Receiver<Arc<ResolvedJwks>>,
    mut roots: watch::Receiver<Arc<Vec<String>>>,
    inputs: watch::Sender<Arc<Inputs>>,
    pusher: Pusher,
) {
    let mut version = 1u64;
    pusher.push(version, PushScope::Full);
    let mut current = inputs.borrow().clone();
    loop {
        tokio::select! {
            r = config.changed() => if r.is_err() { return; },
            r = registry.changed() => if r.is_err() { return; },
            r = jwks.changed() => if r.is_err() { return; },
            r = roots.changed() => if r.is_err() { return; },
        }
        let c = config.borrow_and_update().clone();
        let r = registry.borrow_and_update().clone();
        let j = jwks.borrow_and_update().clone();
        let root_pems = roots.borrow_and_update().clone();
        // Lease renewals change the registry every second without touching
        // anything translation reads: skip the index rebuild for those.
        if c.version() == current.config.version()
            && same_registry_content(&r, &current.registry)
            && j == current.jwks
            && *root_pems == current.local.roots_pem
        {
            continue;
        }
        // The index build reads every service: CPU work, off the runtime.
        let (next, scopes) = {
            let previous = current.clone();
            match tokio::task::spawn_blocking(move || {
                let next = build_with_roots(&c, &r, &root_pems).with_jwks(j);
                let scopes = changes(&previous, &next);
                (next, scopes)
            })
            .await
            {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "rebuilding translation inputs panicked; keeping the last good inputs");
                    continue;
                }
            }
        };
        let next = Arc::new(next);
        current = next.clone();
        // The generator must see the new inputs before the push (Pusher contract),
        // even when nothing a proxy sees changed: status shows the latest versions.
        inputs.send_replace(next.clone());
        if scopes.is_empty() {
            tracing::trace!(
                config = next.config.version(),
                registry = next.registry.revision,
                "inputs changed, but nothing proxies see"
            );
            continue;
        }
        version += 1;
        debug!(
            version,
            config = next.config.version(),
            registry = next.registry.revision,
            ?scopes,
            "translation inputs changed"
        );
        for scope in scopes {
            pusher.push(version, scope);
        }
    }
}

/// Equal in what translation reads of the registry (its clusters and
/// services; not leases, members or log positions).
fn same_registry_content(a: &RegistrySnapshot, b: &RegistrySnapshot) -> bool {
    a.clusters == b.clusters && a.services == b.services
}

/// What proxies must be sent after the inputs went from `old` to `new`:
/// nothing, a full push, or the types and EDS clusters that changed.
///
/// Conservative by construction: anything not known to be endpoint data
/// (config other than WorkloadEntries, the services' shape, the identities
/// behind a service, local addresses that decide a sidecar's inbound ports,
/// DNS services whose endpoints live in CDS) makes it a full push.
pub fn changes(old: &Inputs, new: &Inputs) -> Vec<PushScope> {
    if old.local != new.local
        || old.jwks != new.jwks
        || !same_config_except_endpoints(&old.config, &new.config)
    {
        return vec![PushScope::Full];
    }
    let old_services: Vec<&String> = old.services.services.keys().collect();
    let new_services: Vec<&String> = new.services.services.keys().collect();
    if old_services != new_services {
        return vec![PushScope::Full];
    }
    let mut hosts = Vec::new();
    for (a, b) in old.services.iter().zip(new.services.iter()) {
        if a == b {
            continue;
        }
        if !same_shape(a, b) {
            return vec![PushScope::Full];
        }
        hosts.push(b);
    }
    let mut out = Vec::new();
    if secret::trust_bundle(old) != secret::trust_bundle(new) {
        out.push(PushScope::Types(BTreeSet::from([TypeUrl::Secret])));
    }
    if !hosts.is_empty() {
        let names: BTreeSet<String> = hosts
            .into_iter()
            .flat_map(|s| eds_clusters(&new.config, s))
            .collect();
        out.push(PushScope::Endpoints(names));
    }
    out
}

/// Equal configuration apart from WorkloadEntries, whose effect on output
/// is through the service index (compared separately). Where a resource
/// sits in its file does not matter.
fn same_config_except_endpoints(a: &ConfigSnapshot, b: &ConfigSnapshot) -> bool {
    let relevant = |s: &ConfigSnapshot| {
        s.iter()
            .filter(|(k, _)| k.kind != Kind::WorkloadEntry)
            .map(|(k, r)| (k.clone(), r.resource.clone()))
            .collect::<Vec<_>>()
    };
    relevant(a) == relevant(b)
}

/// Equal apart from what only EDS reads: the endpoints' addresses, health,
/// weights, labels and localities, and the remote clusters' gateways.
fn same_shape(a: &Service, b: &Service) -> bool {
    if a.resolution != Resolution::Static || b.resolution != Resolution::Static {
        // DNS and passthrough services carry their hosts in the cluster.
        return false;
    }
    let strip = |s: &Service| Service {
        local: s.local.iter().map(local_shape).collect(),
        remote: s.remote.iter().map(remote_shape).collect(),
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// A local instance as CDS and LDS see it: its address and ports decide a
/// sidecar's inbound listeners, its service account the peer identities.
fn local_shape(i: &Instance) -> Instance {
    Instance {
        address: i.address.clone(),
        ports: i.ports.clone(),
        service_account: i.service_account.clone(),
        ..blank_instance()
    }
}

/// A remote cluster's instances as CDS sees them: ports and the distinct
/// service accounts (peer identities), not the endpoints themselves.
fn remote_shape(r: &RemoteInstances) -> RemoteInstances {
    let accounts: BTreeSet<&str> = r
        .endpoints
        .iter()
        .map(|e| e.service_account.as_str())
        .collect();
    RemoteInstances {
        cluster: r.cluster.clone(),
        network: r.network.clone(),
        locality: Default::default(),
        eastwest: Vec::new(),
        // Whether the cluster serves the QUIC tunnel decides an east-west
        // gateway's tunnel listener and clusters; its addresses are EDS.
        eastwest_quic: if r.eastwest_quic.is_empty() {
            Vec::new()
        } else {
            vec![String::new()]
        },
        ports: r.ports.clone(),
        endpoints: accounts
            .into_iter()
            .map(|sa| Instance {
                service_account: sa.to_string(),
                ..blank_instance()
            })
            .collect(),
    }
}

fn blank_instance() -> Instance {
    Instance {
        address: String::new(),
        ports: Default::default(),
        labels: Default::default(),
        service_account: String::new(),
        locality: Default::default(),
        network: String::new(),
        weight: 0,
        health: isthmus_federation::model::Health::Healthy,
    }
}

/// Every EDS cluster name that can carry `service`'s endpoints: per port,
/// no subset plus every subset any DestinationRule for the host declares,
/// in both the sidecar form (`outbound|…`) and the east-west form
/// (`outbound_.…`). Names no proxy watches cost nothing: the xDS server
/// only regenerates names a proxy is subscribed to.
fn eds_clusters(config: &ConfigSnapshot, service: &Service) -> Vec<String> {
    let mut subsets = BTreeSet::from([String::new()]);
    for dr in config.destination_rules() {
        if host_matches(
            &resolve_fqdn(&dr.spec.host, dr.namespace()),
            &service.hostname,
        ) {
            subsets.extend(dr.spec.subsets.iter().map(|s| s.name.clone()));
        }
    }
    let mut out = Vec::new();
    for port in &service.ports {
        for subset in &subsets {
            out.push(outbound_cluster(port.port, subset, &service.hostname));
            out.push(outbound_sni(port.port, subset, &service.hostname));
        }
    }
    out
}

#[cfg(test)]
mod tests;
