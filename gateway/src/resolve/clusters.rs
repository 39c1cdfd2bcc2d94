//! One resolution task per DNS cluster, publishing load assignments.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ResolveError, Resolved, Resolver};
use crate::config::{
    ClusterConfig, Discovery, DnsDiscovery, DnsKind, EndpointConfig, Health, LoadAssignment,
    LocalityEndpoints, LookupFamily, DEFAULT_OVERPROVISIONING,
};

/// Shortest re-resolution interval: DNS TTLs have a granularity of one
/// second, and a zero TTL must not make the task spin.
const MIN_REFRESH: Duration = Duration::from_millis(200);

/// The current addresses of one DNS cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedCluster {
    pub assignment: LoadAssignment,
    /// Per host address, the addresses to race when connecting to it (the
    /// host's own first). Only hosts with fallbacks are listed.
    #[serde(skip)]
    pub connect_order: HashMap<SocketAddr, Vec<SocketAddr>>,
}

impl ResolvedCluster {
    /// What to connect to for `host` (happy eyeballs when more than one).
    pub fn connect_order(&self, host: SocketAddr) -> Option<&[SocketAddr]> {
        self.connect_order.get(&host).map(Vec::as_slice)
    }
}

/// Resolved DNS clusters by cluster name.
pub type ResolvedMap = BTreeMap<String, Arc<ResolvedCluster>>;

/// Config dumps show each DNS cluster's current load assignment.
pub fn serialize_resolved<S: serde::Serializer>(m: &ResolvedMap, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(k, v)| (k, &v.assignment)))
}

/// Starts, restarts and stops the per-cluster tasks as CDS changes.
#[derive(Debug)]
pub struct DnsClusters {
    resolver: Result<Resolver, ResolveError>,
    tasks: HashMap<String, (DnsDiscovery, JoinHandle<()>)>,
    tx: watch::Sender<Arc<ResolvedMap>>,
}

impl DnsClusters {
    pub fn new(
        resolver: Result<Resolver, ResolveError>,
    ) -> (Self, watch::Receiver<Arc<ResolvedMap>>) {
        let (tx, rx) = watch::channel(Arc::new(ResolvedMap::new()));
        (
            Self {
                resolver,
                tasks: HashMap::new(),
                tx,
            },
            rx,
        )
    }

    /// Aligns the running tasks with the DNS clusters in `clusters`.
    pub fn sync(&mut self, clusters: &BTreeMap<String, ClusterConfig>) {
        let wanted: HashMap<&String, &DnsDiscovery> = clusters
            .iter()
            .filter_map(|(name, c)| match &c.discovery {
                Discovery::Dns(d) => Some((name, d)),
                _ => None,
            })
            .collect();
        self.tasks.retain(|name, (d, task)| {
            let keep = wanted.get(name).is_some_and(|w| *w == d);
            if !keep {
                task.abort();
            }
            keep
        });
        // Drop results of clusters that are gone or changed.
        self.tx.send_if_modified(|m| {
            let before = m.len();
            let tasks = &self.tasks;
            Arc::make_mut(m).retain(|name, _| tasks.contains_key(name));
            m.len() != before
        });
        for (name, d) in wanted {
            if self.tasks.contains_key(name) {
                continue;
            }
            let resolver = match &self.resolver {
                Ok(r) => r.clone(),
                Err(e) => {
                    tracing::error!(cluster = %name, error = %e, "DNS cluster cannot be resolved: the gateway has no resolver");
                    continue;
                }
            };
            let task = tokio::spawn(run(name.clone(), d.clone(), resolver, self.tx.clone()));
            self.tasks.insert(name.clone(), (d.clone(), task));
        }
    }
}

impl Drop for DnsClusters {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

async fn run(
    name: String,
    d: DnsDiscovery,
    resolver: Resolver,
    tx: watch::Sender<Arc<ResolvedMap>>,
) {
    let mut last: Vec<Option<Resolved>> = vec![None; d.hosts.len()];
    loop {
        let results = futures::future::join_all(
            d.hosts
                .iter()
                .map(|h| resolver.resolve(&h.hostname, d.family)),
        )
        .await;
        let mut next = d.refresh_rate;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(r) => {
                    if d.respect_ttl && !r.ttl.is_zero() {
                        next = next.min(r.ttl);
                    }
                    if last[i].as_ref().map(|l| &l.addrs) != Some(&r.addrs) {
                        tracing::info!(cluster = %name, host = %d.hosts[i].hostname, addrs = ?r.addrs, ttl = ?r.ttl, "DNS cluster host resolved");
                    }
                    last[i] = Some(r);
                }
                Err(e) => {
                    // Keep the last good addresses: a resolver outage must
                    // not empty a cluster that was working.
                    tracing::warn!(cluster = %name, error = %e, keeping = ?last[i].as_ref().map(|l| &l.addrs), "DNS resolution failed; keeping the last good addresses");
                }
            }
        }
        if last.iter().any(Option::is_some) {
            let resolved = Arc::new(assignment(&name, &d, &last));
            tx.send_if_modified(|m| {
                if m.get(&name) == Some(&resolved) {
                    return false;
                }
                Arc::make_mut(m).insert(name.clone(), resolved.clone());
                true
            });
        }
        tokio::time::sleep(next.max(MIN_REFRESH)).await;
    }
}

/// Builds the load assignment from each hostname's current addresses.
fn assignment(name: &str, d: &DnsDiscovery, last: &[Option<Resolved>]) -> ResolvedCluster {
    let mut localities: Vec<LocalityEndpoints> = Vec::new();
    let mut connect_order = HashMap::new();
    for (host, r) in d.hosts.iter().zip(last) {
        let Some(r) = r else { continue };
        let addrs: Vec<SocketAddr> = r
            .addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, host.port))
            .collect();
        let hosts: Vec<SocketAddr> = match d.kind {
            DnsKind::Logical => addrs.iter().take(1).copied().collect(),
            DnsKind::Strict => addrs.clone(),
        };
        for h in &hosts {
            // Race the other family of the same name (or, for a logical
            // host, every address) when connecting.
            let order: Vec<SocketAddr> = match d.kind {
                DnsKind::Logical => addrs.clone(),
                DnsKind::Strict if d.family == LookupFamily::All => {
                    let others: Vec<_> = addrs
                        .iter()
                        .filter(|a| a.is_ipv4() != h.is_ipv4())
                        .map(|a| a.ip())
                        .collect();
                    super::happy::interleave(&[h.ip()], &others)
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, host.port))
                        .collect()
                }
                DnsKind::Strict => Vec::new(),
            };
            if order.len() > 1 {
                connect_order.insert(*h, order);
            }
        }
        let endpoints = hosts.into_iter().map(|address| EndpointConfig {
            address,
            weight: host.weight,
            health: Health::Healthy,
            workload: None,
        });
        match localities.iter_mut().find(|l| {
            l.locality == host.locality
                && l.priority == host.priority
                && l.weight == host.locality_weight
        }) {
            Some(l) => l.endpoints.extend(endpoints),
            None => localities.push(LocalityEndpoints {
                locality: host.locality.clone(),
                priority: host.priority,
                weight: host.locality_weight,
                endpoints: endpoints.collect(),
            }),
        }
    }
    for l in &mut localities {
        // Two names resolving to the same address would be one host twice.
        let mut seen = std::collections::HashSet::new();
        l.endpoints.retain(|e| seen.insert(e.address));
    }
    ResolvedCluster {
        assignment: LoadAssignment {
            cluster_name: name.to_string(),
            localities,
            overprovisioning_factor: DEFAULT_OVERPROVISIONING,
        },
        connect_order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DnsHost, LocalityName};

    fn disc(kind: DnsKind, family: LookupFamily) -> DnsDiscovery {
        DnsDiscovery {
            kind,
            hosts: vec![DnsHost {
                hostname: "api.example".into(),
                port: 443,
                weight: 1,
                locality: LocalityName::default(),
                priority: 0,
                locality_weight: None,
            }],
            family,
            refresh_rate: Duration::from_secs(5),
            respect_ttl: true,
        }
    }

    fn resolved(ips: &[&str]) -> Vec<Option<Resolved>> {
        vec![Some(Resolved {
            addrs: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ttl: Duration::from_secs(1),
        })]
    }

    #[test]
    fn strict_makes_a_host_per_address_and_races_the_other_family() {
        let r = assignment(
            "c",
            &disc(DnsKind::Strict, LookupFamily::All),
            &resolved(&["::1", "10.0.0.1", "10.0.0.2"]),
        );
        let hosts: Vec<String> = r.assignment.localities[0]
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(hosts, ["[::1]:443", "10.0.0.1:443", "10.0.0.2:443"]);
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        let v4: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(r.connect_order(v6).unwrap()[0], v6);
        assert_eq!(r.connect_order(v6).unwrap().len(), 3);
        assert_eq!(r.connect_order(v4).unwrap(), &[v4, v6]);
    }

    #[test]
    fn logical_makes_one_host_with_every_address_as_fallback() {
        let r = assignment(
            "c",
            &disc(DnsKind::Logical, LookupFamily::All),
            &resolved(&["::1", "10.0.0.1"]),
        );
        assert_eq!(r.assignment.localities[0].endpoints.len(), 1);
        let h = r.assignment.localities[0].endpoints[0].address;
        assert_eq!(r.connect_order(h).unwrap().len(), 2);
        let single = assignment(
            "c",
            &disc(DnsKind::Strict, LookupFamily::V4Only),
            &resolved(&["10.0.0.1"]),
        );
        assert!(single.connect_order.is_empty());
    }
}
