//! Load balancing over a cluster's endpoints: priorities with Envoy's
//! overprovisioning semantics, locality weights, and the per-locality policy
//! (round robin, least request P2C, random, ring hash, Maglev).
//!
//! Health is re-evaluated on every pick (EDS health plus outlier ejection),
//! so failover follows ejections immediately without rebuilding anything.

pub mod maglev;
pub mod priority;
pub mod ring_hash;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;
use serde::Serialize;

use crate::config::{Health, LbPolicy, LoadAssignment, LocalityName};
use crate::outlier::HostOutlier;
use maglev::Maglev;
use priority::{
    health_percent, locality_effective_weight, pick_weighted, priority_loads_with_degraded,
};
use ring_hash::Ring;

/// Live per-host counters; survive endpoint updates for the same address.
#[derive(Debug, Default)]
pub struct HostStats {
    pub active: AtomicU64,
    pub outlier: HostOutlier,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: Health,
    pub locality: LocalityName,
    pub priority: u32,
    pub stats: Arc<HostStats>,
}

impl Host {
    pub fn usable(&self) -> bool {
        self.health == Health::Healthy && !self.stats.outlier.is_ejected()
    }

    fn degraded_usable(&self) -> bool {
        self.health == Health::Degraded && !self.stats.outlier.is_ejected()
    }
}

#[derive(Debug)]
struct LocalityGroup {
    weight: Option<u32>,
    hosts: Vec<usize>,
}

#[derive(Debug)]
struct PriorityGroup {
    localities: Vec<LocalityGroup>,
    hosts: Vec<usize>,
    ring: Option<Ring>,
    maglev: Option<Maglev>,
}

/// One cluster's balancer, rebuilt on every endpoint or policy change.
#[derive(Debug)]
pub struct LoadBalancer {
    policy: LbPolicy,
    hosts: Vec<Host>,
    priorities: Vec<PriorityGroup>,
    overprovisioning: u32,
    rr: AtomicUsize,
}

#[derive(Debug, Serialize)]
pub struct HostSnapshot {
    pub address: SocketAddr,
    pub priority: u32,
    pub weight: u32,
    pub health: Health,
    pub ejected: bool,
    pub active: u64,
}

impl LoadBalancer {
    /// Builds a balancer; hosts whose address appeared in `previous` keep
    /// their counters and outlier state.
    pub fn new(policy: LbPolicy, la: &LoadAssignment, previous: Option<&LoadBalancer>) -> Self {
        let old: HashMap<SocketAddr, Arc<HostStats>> = previous
            .map(|p| p.hosts.iter().map(|h| (h.addr, h.stats.clone())).collect())
            .unwrap_or_default();
        let mut hosts = Vec::new();
        let levels = la
            .localities
            .iter()
            .map(|l| l.priority as usize + 1)
            .max()
            .unwrap_or(0);
        let mut priorities: Vec<PriorityGroup> = (0..levels)
            .map(|_| PriorityGroup {
                localities: Vec::new(),
                hosts: Vec::new(),
                ring: None,
                maglev: None,
            })
            .collect();
        for loc in &la.localities {
            let mut group = LocalityGroup {
                weight: loc.weight,
                hosts: Vec::new(),
            };
            for ep in &loc.endpoints {
                let idx = hosts.len();
                hosts.push(Host {
                    addr: ep.address,
                    weight: ep.weight,
                    health: ep.health,
                    locality: loc.locality.clone(),
                    priority: loc.priority,
                    stats: old.get(&ep.address).cloned().unwrap_or_default(),
                });
                group.hosts.push(idx);
                priorities[loc.priority as usize].hosts.push(idx);
            }
            priorities[loc.priority as usize].localities.push(group);
        }
        for p in &mut priorities {
            let keyed: Vec<(String, u32)> = p
                .hosts
                .iter()
                .map(|i| (hosts[*i].addr.to_string(), hosts[*i].weight))
                .collect();
            match policy {
                LbPolicy::RingHash => p.ring = Some(Ring::build(&keyed)),
                LbPolicy::Maglev => p.maglev = Some(Maglev::build(&keyed, maglev::TABLE_SIZE)),
                _ => {}
            }
        }
        Self {
            policy,
            hosts,
            priorities,
            overprovisioning: la.overprovisioning_factor,
            rr: AtomicUsize::new(0),
        }
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn snapshot(&self) -> Vec<HostSnapshot> {
        self.hosts
            .iter()
            .map(|h| HostSnapshot {
                address: h.addr,
                priority: h.priority,
                weight: h.weight,
                health: h.health,
                ejected: h.stats.outlier.is_ejected(),
                active: h.stats.active.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// (ejected, total) for outlier detection's max_ejection_percent.
    pub fn ejected_fraction(&self) -> (usize, usize) {
        let ejected = self
            .hosts
            .iter()
            .filter(|h| h.stats.outlier.is_ejected())
            .count();
        (ejected, self.hosts.len())
    }

    /// (healthy, degraded) load per priority, in percent.
    fn loads(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        let avail = |f: &dyn Fn(&Host) -> bool| -> Vec<f64> {
            self.priorities
                .iter()
                .map(|p| {
                    let n = p.hosts.iter().filter(|i| f(&self.hosts[**i])).count();
                    health_percent(n, p.hosts.len(), self.overprovisioning)
                })
                .collect()
        };
        priority_loads_with_degraded(&avail(&Host::usable), &avail(&Host::degraded_usable))
    }

    /// Current per-priority load on healthy hosts in percent (for config
    /// dump and tests).
    pub fn priority_load(&self) -> Option<Vec<f64>> {
        self.loads().map(|(h, _)| h)
    }

    /// Picks a host. `hash` is the request's hash key for ring hash / Maglev;
    /// `exclude` lists hosts already tried for this connection.
    pub fn pick(&self, hash: Option<u64>, exclude: &[SocketAddr]) -> Option<Host> {
        if self.hosts.is_empty() {
            return None;
        }
        let mut rng = rand::rng();
        let ok = |i: &usize| self.hosts[*i].usable() && !exclude.contains(&self.hosts[*i].addr);
        #[derive(PartialEq)]
        enum Tier {
            Healthy,
            Degraded,
            Panic,
        }
        let (prio, tier) = match self.loads() {
            Some((h, d)) => {
                let n = h.len();
                let all: Vec<f64> = h.into_iter().chain(d).collect();
                match pick_weighted(&all, rng.random::<f64>()) {
                    Some(i) if i < n => (i, Tier::Healthy),
                    Some(i) => (i - n, Tier::Degraded),
                    None => (0, Tier::Panic),
                }
            }
            // Nothing healthy or degraded: Envoy's panic mode routes to all hosts of P0.
            None => (0, Tier::Panic),
        };
        let group = &self.priorities[prio];
        let not_excluded = |i: &usize| !exclude.contains(&self.hosts[*i].addr);
        let candidates: Vec<usize> = match tier {
            Tier::Healthy => self.locality_candidates(group, &ok, &mut rng),
            Tier::Degraded => group
                .hosts
                .iter()
                .copied()
                .filter(|i| self.hosts[*i].degraded_usable() && not_excluded(i))
                .collect(),
            Tier::Panic => group.hosts.iter().copied().filter(not_excluded).collect(),
        };
        if candidates.is_empty() {
            // Everything usable was excluded: any other host in any priority.
            return self
                .hosts
                .iter()
                .find(|h| h.usable() && !exclude.contains(&h.addr))
                .cloned();
        }
        let chosen = match self.policy {
            LbPolicy::RoundRobin => self.round_robin(&candidates),
            LbPolicy::Random => self.random(&candidates, &mut rng),
            LbPolicy::LeastRequest => self.least_request(&candidates, &mut rng),
            LbPolicy::RingHash | LbPolicy::Maglev => {
                let h = hash.unwrap_or_else(|| rng.random());
                let walk: Box<dyn Iterator<Item = usize>> = match (&group.ring, &group.maglev) {
                    (Some(r), _) => Box::new(r.walk(h).map(|i| group.hosts[i])),
                    (_, Some(m)) => Box::new(m.walk(h).map(|i| group.hosts[i])),
                    _ => Box::new(std::iter::empty()),
                };
                // O(1) membership while walking; the walk is bounded so a
                // pathological table cannot spin.
                let mut allowed = vec![false; self.hosts.len()];
                for i in &candidates {
                    allowed[*i] = true;
                }
                walk.take(group.hosts.len() * 64 + 1)
                    .find(|i| allowed[*i])
                    .unwrap_or(candidates[0])
            }
        };
        Some(self.hosts[chosen].clone())
    }

    fn locality_candidates(
        &self,
        group: &PriorityGroup,
        ok: &dyn Fn(&usize) -> bool,
        rng: &mut impl Rng,
    ) -> Vec<usize> {
        // Ring hash and Maglev hash over the whole priority (Envoy ignores
        // locality weights for them).
        let weighted = group.localities.iter().any(|l| l.weight.is_some())
            && !matches!(self.policy, LbPolicy::RingHash | LbPolicy::Maglev);
        if weighted {
            let weights: Vec<f64> = group
                .localities
                .iter()
                .map(|l| {
                    let healthy = l.hosts.iter().filter(|i| ok(i)).count();
                    locality_effective_weight(
                        l.weight.unwrap_or(0),
                        healthy,
                        l.hosts.len(),
                        self.overprovisioning,
                    )
                })
                .collect();
            if let Some(li) = pick_weighted(&weights, rng.random::<f64>()) {
                return group.localities[li]
                    .hosts
                    .iter()
                    .copied()
                    .filter(|i| ok(i))
                    .collect();
            }
        }
        group.hosts.iter().copied().filter(|i| ok(i)).collect()
    }

    fn round_robin(&self, candidates: &[usize]) -> usize {
        let total: u64 = candidates
            .iter()
            .map(|i| u64::from(self.hosts[*i].weight))
            .sum();
        let n = self.rr.fetch_add(1, Ordering::Relaxed) as u64;
        if total == candidates.len() as u64 {
            return candidates[(n % total) as usize];
        }
        // Weighted: walk the cumulative weights.
        let mut x = n % total.max(1);
        for i in candidates {
            let w = u64::from(self.hosts[*i].weight);
            if x < w {
                return *i;
            }
            x -= w;
        }
        candidates[0]
    }

    fn random(&self, candidates: &[usize], rng: &mut impl Rng) -> usize {
        let weights: Vec<f64> = candidates
            .iter()
            .map(|i| f64::from(self.hosts[*i].weight))
            .collect();
        pick_weighted(&weights, rng.random::<f64>()).map_or(candidates[0], |k| candidates[k])
    }

    fn least_request(&self, candidates: &[usize], rng: &mut impl Rng) -> usize {
        if candidates.len() == 1 {
            return candidates[0];
        }
        // Power of two choices.
        let a = candidates[rng.random_range(0..candidates.len())];
        let b = candidates[rng.random_range(0..candidates.len())];
        let la = self.hosts[a].stats.active.load(Ordering::Relaxed);
        let lb = self.hosts[b].stats.active.load(Ordering::Relaxed);
        if lb < la {
            b
        } else {
            a
        }
    }
}

#[cfg(test)]
mod tests;
