//! The leader's lease clock. Expiry is decided by the log: the leader only
//! proposes `ExpireLease` when its monotonic clock says a cluster missed its
//! renewals; the state machine applies it only if no renewal committed in
//! between. Followers keep no clock at all.

use crate::state::RegistrySnapshot;
use std::collections::HashMap;
use tokio::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Tracked {
    renewed_at: u64,
    deadline: Instant,
    proposed_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct LeaseClock {
    ttl: Duration,
    grace: Duration,
    leading: bool,
    tracked: HashMap<String, Tracked>,
}

impl LeaseClock {
    pub fn new(ttl: Duration, grace: Duration) -> LeaseClock {
        LeaseClock {
            ttl,
            grace,
            leading: false,
            tracked: HashMap::new(),
        }
    }

    /// A new leader cannot know when the old one last heard from each
    /// cluster, so every live lease gets a full ttl plus grace.
    pub fn become_leader(&mut self, now: Instant, view: &RegistrySnapshot) {
        self.leading = true;
        self.tracked.clear();
        for (cluster, lease) in &view.leases {
            if !lease.expired {
                self.tracked.insert(
                    cluster.clone(),
                    Tracked {
                        renewed_at: lease.renewed_at,
                        deadline: now + self.ttl + self.grace,
                        proposed_at: None,
                    },
                );
            }
        }
    }

    pub fn step_down(&mut self) {
        self.leading = false;
        self.tracked.clear();
    }

    /// Called after applying entries: a renewal shows up as a new `renewed_at`.
    pub fn observe(&mut self, now: Instant, view: &RegistrySnapshot) {
        if !self.leading {
            return;
        }
        self.tracked
            .retain(|c, _| view.leases.get(c).is_some_and(|l| !l.expired));
        for (cluster, lease) in &view.leases {
            if lease.expired {
                continue;
            }
            let fresh = match self.tracked.get(cluster) {
                Some(t) => t.renewed_at != lease.renewed_at,
                None => true,
            };
            if fresh {
                self.tracked.insert(
                    cluster.clone(),
                    Tracked {
                        renewed_at: lease.renewed_at,
                        deadline: now + self.ttl,
                        proposed_at: None,
                    },
                );
            }
        }
    }

    /// Leases whose deadline passed and for which no expiry is in flight
    /// (an expiry that did not commit within a ttl is proposed again).
    pub fn due(&mut self, now: Instant) -> Vec<(String, u64)> {
        if !self.leading {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (cluster, t) in self.tracked.iter_mut() {
            let in_flight = t.proposed_at.is_some_and(|p| now < p + self.ttl);
            if now >= t.deadline && !in_flight {
                t.proposed_at = Some(now);
                out.push((cluster.clone(), t.renewed_at));
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::LeaseState;

    fn view(leases: &[(&str, u64, bool)]) -> RegistrySnapshot {
        let mut v = RegistrySnapshot::default();
        for (c, r, e) in leases {
            v.leases.insert(
                c.to_string(),
                LeaseState {
                    renewed_at: *r,
                    expired: *e,
                },
            );
        }
        v
    }

    #[test]
    fn expiry_after_ttl_plus_grace_for_new_leader_then_ttl() {
        let ttl = Duration::from_secs(3);
        let grace = Duration::from_secs(1);
        let mut clock = LeaseClock::new(ttl, grace);
        let t0 = Instant::now();
        let v = view(&[("a", 5, false), ("b", 6, true)]);
        assert!(
            clock.due(t0 + ttl * 10).is_empty(),
            "followers never expire"
        );
        clock.become_leader(t0, &v);
        assert!(clock.due(t0 + ttl).is_empty());
        assert_eq!(clock.due(t0 + ttl + grace), vec![("a".to_string(), 5)]);
        assert!(clock.due(t0 + ttl + grace).is_empty(), "in flight");
        // A renewal commits: fresh deadline of one ttl.
        let t1 = t0 + ttl + grace;
        clock.observe(t1, &view(&[("a", 9, false)]));
        assert!(clock.due(t1 + ttl - Duration::from_millis(1)).is_empty());
        assert_eq!(clock.due(t1 + ttl), vec![("a".to_string(), 9)]);
        // Expired leases are no longer tracked.
        clock.observe(t1 + ttl, &view(&[("a", 9, true)]));
        assert!(clock.due(t1 + ttl * 5).is_empty());
        clock.step_down();
        assert!(clock.due(t1 + ttl * 50).is_empty());
    }
}
