//! Resolves east-west gateway hostnames in the registry view that the
//! translation reads.
//!
//! A cluster behind a cloud load balancer that has only a DNS name (AWS
//! ELBs) publishes its east-west gateway as `name:port`. Envoy's EDS takes
//! only IP addresses, so, as istiod does for network gateways, the control
//! plane resolves those names itself and hands the translation a registry
//! snapshot in which every gateway address is `ip:port`. Lookups honour the
//! answers' TTLs (clamped, so a TTL of 0 cannot spin and a day-long one
//! still gets checked), run off the registry path (an endpoint change never
//! waits for DNS), and a name whose lookups fail keeps its last good
//! addresses: losing DNS must not cut a working cross-cluster path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::RegistrySnapshot;
use isthmus_gateway::config::LookupFamily;
use isthmus_gateway::resolve::Resolver;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Re-resolve at least this often, whatever the TTL says.
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// And never more often than this (TTL 0 answers are common behind ELBs).
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// Retry delay after a failed lookup.
const RETRY: Duration = Duration::from_secs(5);

/// What is known about one gateway hostname.
#[derive(Debug, Clone)]
struct Entry {
    /// Last good addresses (empty until the first successful lookup).
    addrs: Vec<IpAddr>,
    /// When to look the name up again.
    due: Instant,
    in_flight: bool,
}

/// Every `host:port` gateway address of `snapshot` whose host is a name.
fn hostnames(snapshot: &RegistrySnapshot) -> BTreeSet<String> {
    snapshot
        .clusters
        .values()
        .flat_map(|c| c.eastwest_tcp.iter().chain(&c.eastwest_quic))
        .filter_map(|a| split(a).map(|(host, _)| host))
        .filter(|h| h.parse::<IpAddr>().is_err())
        .map(str::to_string)
        .collect()
}

/// `host:port` or `[v6]:port`.
fn split(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// `snapshot` with every hostname gateway address replaced by its resolved
/// addresses (none while a name has never resolved). Returns the same
/// `Arc` when there is nothing to replace, which keeps the common case (IP
/// addresses only) free.
pub fn rewrite(
    snapshot: &Arc<RegistrySnapshot>,
    resolved: &BTreeMap<String, Vec<IpAddr>>,
) -> Arc<RegistrySnapshot> {
    if hostnames(snapshot).is_empty() {
        return snapshot.clone();
    }
    let expand = |addrs: &[String]| -> Vec<String> {
        let mut out = Vec::with_capacity(addrs.len());
        for a in addrs {
            match split(a) {
                Some((host, port)) if host.parse::<IpAddr>().is_err() => {
                    for ip in resolved.get(host).into_iter().flatten() {
                        let s = SocketAddr::new(*ip, port).to_string();
                        if !out.contains(&s) {
                            out.push(s);
                        }
                    }
                }
                _ => {
                    if !out.contains(a) {
                        out.push(a.clone());
                    }
                }
            }
        }
        out
    };
    let mut next = (**snapshot).clone();
    for c in next.clusters.values_mut() {
        c.eastwest_tcp = expand(&c.eastwest_tcp);
        c.eastwest_quic = expand(&c.eastwest_quic);
    }
    Arc::new(next)
}

/// One finished lookup: the name, and its addresses and TTL or the error.
type Lookup = (String, Result<(Vec<IpAddr>, Duration), String>);

fn clamp(ttl: Duration) -> Duration {
    ttl.clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Watches `registry`, resolves gateway names, and publishes the rewritten
/// snapshots on `out` until `registry` closes.
pub async fn run(
    mut registry: watch::Receiver<Arc<RegistrySnapshot>>,
    out: watch::Sender<Arc<RegistrySnapshot>>,
    resolver: Resolver,
) {
    let mut names: BTreeMap<String, Entry> = BTreeMap::new();
    let mut lookups: JoinSet<Lookup> = JoinSet::new();
    let mut current = registry.borrow_and_update().clone();
    loop {
        // Start a lookup for every wanted name that is due (or new), and
        // forget names no cluster publishes any more.
        let wanted = hostnames(&current);
        names.retain(|n, _| wanted.contains(n));
        let now = Instant::now();
        for name in wanted {
            let entry = names.entry(name.clone()).or_insert_with(|| Entry {
                addrs: Vec::new(),
                due: now,
                in_flight: false,
            });
            if entry.in_flight || entry.due > now {
                continue;
            }
            entry.in_flight = true;
            let r = resolver.clone();
            lookups.spawn(async move {
                let res = r
                    .resolve(&name, LookupFamily::All)
                    .await
                    .map(|x| (x.addrs, x.ttl))
                    .map_err(|e| e.to_string());
                (name, res)
            });
        }
        let resolved: BTreeMap<String, Vec<IpAddr>> = names
            .iter()
            .map(|(n, e)| (n.clone(), e.addrs.clone()))
            .collect();
        let next = rewrite(&current, &resolved);
        out.send_if_modified(|v| {
            if **v == *next {
                false
            } else {
                *v = next;
                true
            }
        });
        let next_refresh = names.values().filter(|e| !e.in_flight).map(|e| e.due).min();
        tokio::select! {
            changed = registry.changed() => {
                if changed.is_err() {
                    return;
                }
                current = registry.borrow_and_update().clone();
            }
            Some(Ok((name, res))) = lookups.join_next(), if !lookups.is_empty() => {
                let Some(entry) = names.get_mut(&name) else { continue };
                entry.in_flight = false;
                match res {
                    Ok((addrs, ttl)) => {
                        if entry.addrs != addrs {
                            debug!(%name, ?addrs, "east-west gateway name resolved");
                        }
                        entry.addrs = addrs;
                        entry.due = Instant::now() + clamp(ttl);
                    }
                    Err(error) => {
                        warn!(
                            %name,
                            %error,
                            kept = entry.addrs.len(),
                            "cannot resolve an east-west gateway name; keeping its last good addresses"
                        );
                        entry.due = Instant::now() + RETRY;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_refresh.unwrap_or_else(|| Instant::now() + MAX_REFRESH)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_federation::model::ClusterInfo;

    fn snapshot(eastwest: &[&str]) -> Arc<RegistrySnapshot> {
        let mut s = RegistrySnapshot::default();
        s.clusters.insert(
            "us-west".into(),
            ClusterInfo {
                id: "us-west".into(),
                network: "net-west".into(),
                locality: Default::default(),
                eastwest_tcp: eastwest.iter().map(|s| s.to_string()).collect(),
                eastwest_quic: Vec::new(),
                ingress: Vec::new(),
                intermediate_pem: String::new(),
                roots_pem: Vec::new(),
            },
        );
        Arc::new(s)
    }

    #[test]
    fn ip_only_snapshots_pass_through_untouched() {
        let s = snapshot(&["10.0.0.1:15443", "[fd00::1]:15443"]);
        assert!(hostnames(&s).is_empty());
        assert!(Arc::ptr_eq(&rewrite(&s, &BTreeMap::new()), &s));
    }

    #[test]
    fn names_expand_to_every_resolved_address_and_vanish_until_resolved() {
        let s = snapshot(&["ew.elb.example:15443", "10.0.0.9:15443"]);
        assert_eq!(
            hostnames(&s),
            BTreeSet::from(["ew.elb.example".to_string()])
        );
        let none = rewrite(&s, &BTreeMap::new());
        assert_eq!(none.clusters["us-west"].eastwest_tcp, ["10.0.0.9:15443"]);
        let resolved = BTreeMap::from([(
            "ew.elb.example".to_string(),
            vec!["10.0.0.1".parse().unwrap(), "fd00::2".parse().unwrap()],
        )]);
        let out = rewrite(&s, &resolved);
        assert_eq!(
            out.clusters["us-west"].eastwest_tcp,
            ["10.0.0.1:15443", "[fd00::2]:15443", "10.0.0.9:15443"]
        );
    }

    #[test]
    fn refresh_interval_is_clamped() {
        assert_eq!(clamp(Duration::ZERO), MIN_REFRESH);
        assert_eq!(clamp(Duration::MAX), MAX_REFRESH);
        assert_eq!(clamp(Duration::from_secs(30)), Duration::from_secs(30));
    }
}
