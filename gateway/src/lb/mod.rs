//! Load balancing over a cluster's endpoints: priorities with Envoy's
//! overprovisioning semantics, locality weights, and the per-locality policy
//! (round robin, least request P2C, random, ring hash, Maglev).
//!
//! Host usability (EDS health plus outlier ejection) and the priority loads
//! are computed on change, not per pick: a cached [`HealthView`] is reused
//! until an ejection happens anywhere (the outlier health epoch moves) or an
//! ejection it knows of runs out, so failover still follows ejections
//! immediately without rebuilding the balancer.

pub mod maglev;
pub mod priority;
pub mod ring_hash;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use rand::Rng;
use serde::Serialize;

use crate::config::{Health, LbPolicy, LoadAssignment, LocalityName};
use crate::outlier::{health_epoch, now_ms, success_rate, HostOutlier};
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

/// Host usability and priority loads at one health epoch.
#[derive(Debug)]
struct HealthView {
    epoch: u64,
    /// When the earliest current ejection ends (`u64::MAX`: none).
    expires_ms: u64,
    usable: Vec<bool>,
    degraded: Vec<bool>,
    ejected: usize,
    loads: Option<(Vec<f64>, Vec<f64>)>,
}

/// One cluster's balancer, rebuilt on every endpoint or policy change.
#[derive(Debug)]
pub struct LoadBalancer {
    policy: LbPolicy,
    hosts: Vec<Host>,
    priorities: Vec<PriorityGroup>,
    overprovisioning: u32,
    rr: AtomicUsize,
    /// Cache of [`HealthView`]; replaced (never mutated) when stale.
    view: RwLock<Option<Arc<HealthView>>>,
    success_rate: success_rate::Clock,
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
            view: RwLock::new(None),
            success_rate: success_rate::Clock::default(),
        }
    }

    /// (healthy, degraded) load per priority, as picks see them.
    #[cfg(test)]
    fn loads(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        self.health().loads.clone()
    }

    /// The success-rate detector's evaluation clock for this cluster.
    pub(crate) fn success_rate_clock(&self) -> &success_rate::Clock {
        &self.success_rate
    }

    /// The current health view, recomputed only when stale.
    fn health(&self) -> Arc<HealthView> {
        let epoch = health_epoch();
        let now = now_ms();
        if let Some(v) = self.view.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if v.epoch == epoch && now < v.expires_ms {
                return v.clone();
            }
        }
        let view = Arc::new(self.compute_health(epoch, now));
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Some(view.clone());
        view
    }

    fn compute_health(&self, epoch: u64, now: u64) -> HealthView {
        let mut expires_ms = u64::MAX;
        let mut ejected = 0;
        let mut usable = Vec::with_capacity(self.hosts.len());
        let mut degraded = Vec::with_capacity(self.hosts.len());
        for h in &self.hosts {
            let until = h.stats.outlier.ejected_until_ms();
            let is_ejected = until != 0 && now < until;
            if is_ejected {
                ejected += 1;
                expires_ms = expires_ms.min(until);
            }
            usable.push(h.health == Health::Healthy && !is_ejected);
            degraded.push(h.health == Health::Degraded && !is_ejected);
        }
        let avail = |f: &[bool]| -> Vec<f64> {
            self.priorities
                .iter()
                .map(|p| {
                    let n = p.hosts.iter().filter(|i| f[**i]).count();
                    health_percent(n, p.hosts.len(), self.overprovisioning)
                })
                .collect()
        };
        let loads = priority_loads_with_degraded(&avail(&usable), &avail(&degraded));
        HealthView {
            epoch,
            expires_ms,
            usable,
            degraded,
            ejected,
            loads,
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
        (self.health().ejected, self.hosts.len())
    }

    /// Current per-priority load on healthy hosts in percent (for config
    /// dump and tests).
    pub fn priority_load(&self) -> Option<Vec<f64>> {
        self.health().loads.clone().map(|(h, _)| h)
    }

    /// Picks a host. `hash` is the request's hash key for ring hash / Maglev;
    /// `exclude` lists hosts already tried for this connection.
    pub fn pick(&self, hash: Option<u64>, exclude: &[SocketAddr]) -> Option<Host> {
        if self.hosts.is_empty() {
            return None;
        }
        let mut rng = rand::rng();
        let view = self.health();
        let ok = |i: &usize| view.usable[*i] && !exclude.contains(&self.hosts[*i].addr);
        #[derive(PartialEq)]
        enum Tier {
            Healthy,
            Degraded,
            Panic,
        }
        let (prio, tier) = match &view.loads {
            Some((h, d)) => {
                // Usually one priority carries all the load: no draw needed.
                if let Some(i) = h.iter().position(|l| *l >= 100.0) {
                    (i, Tier::Healthy)
                } else {
                    let n = h.len();
                    let all: Vec<f64> = h.iter().chain(d).copied().collect();
                    match pick_weighted(&all, rng.random::<f64>()) {
                        Some(i) if i < n => (i, Tier::Healthy),
                        Some(i) => (i - n, Tier::Degraded),
                        None => (0, Tier::Panic),
                    }
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
                .filter(|i| view.degraded[*i] && not_excluded(i))
                .collect(),
            Tier::Panic => group.hosts.iter().copied().filter(not_excluded).collect(),
        };
        // Everything usable in the drawn priority was excluded (retries
        // avoiding hosts or priorities already tried): the first priority,
        // in order, that still has a usable host, balanced as usual.
        let (group, candidates) = if candidates.is_empty() {
            self.priorities.iter().find_map(|g| {
                let c = self.locality_candidates(g, &ok, &mut rng);
                (!c.is_empty()).then_some((g, c))
            })?
        } else {
            (group, candidates)
        };
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
