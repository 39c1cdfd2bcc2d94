//! The running configuration: accepted resources turned into objects the
//! proxy uses per connection (balancers, rustls configs). Built outside any
//! lock by the one task that owns configuration, then published whole
//! through `watch` channels.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{
    ClusterConfig, Discovery, FilterChainConfig, ListenerConfig, LoadAssignment, NetworkFilter,
    RouteTable, SanMatcher, SecretConfig,
};
use crate::lb::LoadBalancer;
use crate::tls::{self, CertReceiver, SecretLookup};

/// Every resource the data plane has accepted, by name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResourceSet {
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub endpoints: BTreeMap<String, LoadAssignment>,
    pub secrets: BTreeMap<String, SecretConfig>,
    pub routes: BTreeMap<String, RouteTable>,
    /// Current addresses of STRICT_DNS/LOGICAL_DNS clusters (`crate::resolve`).
    #[serde(serialize_with = "crate::resolve::serialize_resolved")]
    pub resolved: crate::resolve::ResolvedMap,
}

/// Route configurations received over RDS, read per request.
pub type RouteTables = FastMap<String, Arc<RouteTable>>;

/// A map looked up on every request. Its keys come from the control plane
/// (cluster and route names, endpoint addresses), not from clients, so the
/// fast hash needs no protection against chosen collisions; std's SipHash
/// cost more than the rest of the lookup.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl SecretLookup for BTreeMap<String, SecretConfig> {
    fn roots(&self, name: &str) -> Option<(Vec<Vec<u8>>, Vec<SanMatcher>)> {
        self.get(name)
            .map(|s| (s.roots.clone(), s.san_matchers.clone()))
    }

    fn certificate(&self, name: &str) -> Option<crate::tls::ServerCredential> {
        self.get(name).and_then(|s| s.certificate.clone())
    }
}

impl ResourceSet {
    /// EDS names referenced by clusters.
    pub fn eds_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .clusters
            .values()
            .filter_map(|c| c.eds_name().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// RDS names referenced by HTTP connection managers.
    pub fn rds_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .listeners
            .values()
            .flat_map(|l| l.filter_chains.iter().chain(l.default_chain.iter()))
            .filter_map(|c| match &c.filter {
                NetworkFilter::Http(h) => h.rds_name().map(str::to_string),
                NetworkFilter::TcpProxy(_) => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// SDS names (other than the local `default`) referenced anywhere.
    pub fn sds_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        for c in self.clusters.values() {
            if let Some(s) = c.tls.as_ref().and_then(|t| t.validation.secret.clone()) {
                v.push(s);
            }
        }
        for l in self.listeners.values() {
            for ch in l.filter_chains.iter().chain(l.default_chain.iter()) {
                if let Some(t) = &ch.tls {
                    v.extend(t.sds_names());
                }
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

/// Counters that must survive cluster updates (circuit breaking counts).
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub active: AtomicU64,
    pub pending: AtomicU64,
    /// In-flight HTTP requests (`max_requests`).
    pub requests: AtomicU64,
    /// Retries in flight (`max_retries`, the retry budget).
    pub retries: AtomicU64,
}

#[derive(Debug)]
pub struct ClusterRuntime {
    pub config: ClusterConfig,
    pub lb: LoadBalancer,
    /// `Some(Err)` when TLS cannot be set up yet (e.g. ROOTCA not received);
    /// connections to the cluster then fail with this reason.
    pub tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    pub counters: Arc<ClusterCounters>,
    /// False for an EDS cluster whose endpoints have not arrived.
    pub warm: bool,
    /// The endpoints the balancer was built from (to skip no-op rebuilds).
    pub assignment: Option<LoadAssignment>,
    /// Pooled HTTP connections to this cluster's hosts.
    pub http_pool: crate::http::pool::ClusterPool,
    /// DNS clusters: what the balancer was built from, with the addresses
    /// to race per host (happy eyeballs).
    pub dns: Option<Arc<crate::resolve::ResolvedCluster>>,
}

impl ClusterRuntime {
    /// The addresses to race when connecting to `host`, when it has more
    /// than one (a dual-stack DNS host).
    pub fn connect_order(&self, host: std::net::SocketAddr) -> Option<&[std::net::SocketAddr]> {
        self.dns.as_ref().and_then(|d| d.connect_order(host))
    }
}

#[derive(Debug, Default)]
pub struct ClusterTable {
    pub clusters: FastMap<String, Arc<ClusterRuntime>>,
}

impl ClusterTable {
    pub fn get(&self, name: &str) -> Option<Arc<ClusterRuntime>> {
        self.clusters.get(name).cloned()
    }
}

/// Builds the cluster table. Clusters whose config and endpoints did not
/// change keep their runtime (balancer tables are not rebuilt) unless
/// `secrets_changed` forces new TLS configs.
pub fn build_clusters(
    set: &ResourceSet,
    cert: Option<&CertReceiver>,
    previous: &ClusterTable,
    secrets_changed: bool,
) -> ClusterTable {
    let mut clusters = FastMap::default();
    for (name, cfg) in &set.clusters {
        let prev = previous.clusters.get(name);
        let (la, warm) = match &cfg.discovery {
            Discovery::Static(la) => (Some(la), true),
            Discovery::OriginalDst => (None, true),
            Discovery::Dns(_) => {
                let la = set.resolved.get(name).map(|r| &r.assignment);
                (la, la.is_some())
            }
            Discovery::Eds { service_name } => {
                let la = set.endpoints.get(service_name);
                (la, la.is_some())
            }
        };
        if let Some(p) = prev {
            let same_tls = !secrets_changed || cfg.tls.is_none();
            let same_dns = p.dns.as_ref() == set.resolved.get(name);
            if same_tls && same_dns && p.config == *cfg && p.assignment.as_ref() == la {
                clusters.insert(name.clone(), p.clone());
                continue;
            }
        }
        let empty = LoadAssignment {
            cluster_name: name.clone(),
            localities: Vec::new(),
            overprovisioning_factor: crate::config::DEFAULT_OVERPROVISIONING,
        };
        let lb = LoadBalancer::new(cfg.lb_policy, la.unwrap_or(&empty), prev.map(|p| &p.lb));
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| tls::client_config(t, &set.secrets, cert).map_err(|e| e.to_string()));
        if let Some(Err(e)) = &tls {
            tracing::warn!(cluster = %name, error = %e, "upstream TLS not ready; connections to this cluster will fail");
        }
        clusters.insert(
            name.clone(),
            Arc::new(ClusterRuntime {
                config: cfg.clone(),
                lb,
                tls,
                counters: prev.map(|p| p.counters.clone()).unwrap_or_default(),
                warm,
                assignment: la.cloned(),
                http_pool: crate::http::pool::ClusterPool::new(cfg.http),
                dns: match &cfg.discovery {
                    Discovery::Dns(_) => set.resolved.get(name).cloned(),
                    _ => None,
                },
            }),
        );
    }
    ClusterTable { clusters }
}

#[derive(Debug)]
pub struct ChainRuntime {
    pub config: FilterChainConfig,
    pub tls: Option<Result<Arc<rustls::ServerConfig>, String>>,
}

#[derive(Debug)]
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    pub chains: Vec<ChainRuntime>,
    pub default_chain: Option<ChainRuntime>,
}

pub fn build_listener(
    cfg: &ListenerConfig,
    set: &ResourceSet,
    cert: Option<&CertReceiver>,
) -> ListenerRuntime {
    let chain = |c: &FilterChainConfig| {
        let tls = c
            .tls
            .as_ref()
            .map(|t| tls::server_config(t, &set.secrets, cert).map_err(|e| e.to_string()));
        if let Some(Err(e)) = &tls {
            tracing::warn!(listener = %cfg.name, chain = %c.name, error = %e, "TLS termination not ready; connections on this chain will be closed");
        }
        ChainRuntime {
            config: c.clone(),
            tls,
        }
    };
    ListenerRuntime {
        config: cfg.clone(),
        chains: cfg.filter_chains.iter().map(chain).collect(),
        default_chain: cfg.default_chain.as_ref().map(chain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        CircuitBreakerThresholds, EndpointConfig, Health, LbPolicy, LocalityEndpoints, LocalityName,
    };

    fn set(port: u16) -> ResourceSet {
        let mut s = ResourceSet::default();
        s.clusters.insert(
            "c".into(),
            ClusterConfig {
                name: "c".into(),
                discovery: Discovery::Eds {
                    service_name: "c".into(),
                },
                lb_policy: LbPolicy::Maglev,
                connect_timeout: std::time::Duration::from_secs(1),
                tls: None,
                circuit_breakers: CircuitBreakerThresholds::default(),
                outlier: None,
                http: Default::default(),
                tunnel: false,
                tcp_keepalive: None,
            },
        );
        s.endpoints.insert(
            "c".into(),
            LoadAssignment {
                cluster_name: "c".into(),
                localities: vec![LocalityEndpoints {
                    locality: LocalityName::default(),
                    priority: 0,
                    weight: None,
                    endpoints: vec![EndpointConfig {
                        address: ([127, 0, 0, 1], port).into(),
                        weight: 1,
                        health: Health::Healthy,
                        workload: None,
                    }],
                }],
                overprovisioning_factor: 140,
            },
        );
        s
    }

    #[test]
    fn unchanged_clusters_are_reused_and_changed_ones_rebuilt() {
        let t1 = build_clusters(&set(1), None, &ClusterTable::default(), false);
        let t2 = build_clusters(&set(1), None, &t1, false);
        assert!(Arc::ptr_eq(&t1.clusters["c"], &t2.clusters["c"]));
        let t3 = build_clusters(&set(2), None, &t2, false);
        assert!(!Arc::ptr_eq(&t2.clusters["c"], &t3.clusters["c"]));
        assert!(
            Arc::ptr_eq(&t2.clusters["c"].counters, &t3.clusters["c"].counters),
            "counters survive rebuilds"
        );
        let mut cold = set(1);
        cold.endpoints.clear();
        assert!(!build_clusters(&cold, None, &ClusterTable::default(), false).clusters["c"].warm);
    }
}
