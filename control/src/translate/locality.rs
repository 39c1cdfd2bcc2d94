//! Locality-aware priorities and weights: where an endpoint stands relative
//! to the calling proxy decides its EDS priority (same zone, same region,
//! failover region, same network, the rest), unless the DestinationRule's
//! `localityLbSetting` says otherwise (`failoverPriority`, `distribute`,
//! `enabled: false`).
//!
//! Unlike Istio, failover priorities do not require outlier detection: the
//! registry's health and the clients' own connection failures drive
//! failover between clusters, and a client with no healthy priority-0
//! endpoint must move on.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_federation::model::Locality;

use crate::config::{LocalityDistribute, LocalityLbSetting};

/// Where a caller or an endpoint stands.
#[derive(Debug, Clone, Copy)]
pub struct Point<'a> {
    pub locality: &'a Locality,
    pub network: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Point<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            "topology.istio.io/network" => Some(self.network),
            "topology.kubernetes.io/region" => Some(&self.locality.region),
            "topology.kubernetes.io/zone" => Some(&self.locality.zone),
            "topology.istio.io/subzone" => Some(&self.locality.subzone),
            other => self.labels.get(other).map(String::as_str),
        }
    }
}

/// The raw priority level of `target` seen from `caller` (lower is
/// preferred). Levels need not be contiguous; [`compact`] makes them so.
pub fn level(caller: &Point<'_>, target: &Point<'_>, setting: Option<&LocalityLbSetting>) -> u32 {
    if let Some(s) = setting {
        if s.enabled == Some(false) || distribute_rule(s, caller.locality).is_some() {
            return 0;
        }
        if !s.failover_priority.is_empty() {
            return failover_priority_level(caller, target, &s.failover_priority);
        }
    }
    let (c, t) = (caller.locality, target.locality);
    if c.region == t.region && c.zone == t.zone {
        return 0;
    }
    if c.region == t.region {
        return 1;
    }
    let failover_to = setting
        .into_iter()
        .flat_map(|s| &s.failover)
        .any(|f| f.from == c.region && f.to == t.region);
    if failover_to {
        return 2;
    }
    if caller.network == target.network {
        return 3;
    }
    4
}

/// `failoverPriority`: the more leading labels match the caller, the
/// higher the priority; `key=value` entries compare the endpoint to `value`.
fn failover_priority_level(caller: &Point<'_>, target: &Point<'_>, labels: &[String]) -> u32 {
    let matched = labels
        .iter()
        .take_while(|entry| match entry.split_once('=') {
            Some((key, value)) => target.label(key) == Some(value),
            None => {
                let want = caller.label(entry);
                want.is_some() && want == target.label(entry)
            }
        })
        .count();
    u32::try_from(labels.len() - matched).unwrap_or(u32::MAX)
}

/// Maps the levels in use onto 0, 1, 2, ... (Envoy and gRPC reject gaps).
pub fn compact(levels: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u32> {
    let used: BTreeSet<u32> = levels.into_iter().collect();
    used.into_iter()
        .enumerate()
        .map(|(i, l)| (l, u32::try_from(i).unwrap_or(u32::MAX)))
        .collect()
}

/// The `distribute` entry whose `from` covers the caller.
pub fn distribute_rule<'a>(
    setting: &'a LocalityLbSetting,
    caller: &Locality,
) -> Option<&'a LocalityDistribute> {
    setting
        .distribute
        .iter()
        .find(|d| locality_matches(&d.from, caller))
}

/// Istio locality patterns: `region`, `region/zone`, `region/zone/subzone`,
/// where `*` matches anything from that segment on.
pub fn locality_matches(pattern: &str, locality: &Locality) -> bool {
    let parts = [&locality.region, &locality.zone, &locality.subzone];
    for (i, seg) in pattern.split('/').enumerate() {
        if seg == "*" {
            return true;
        }
        match parts.get(i) {
            Some(value) if *value == seg => {}
            _ => return false,
        }
    }
    true
}

/// Locality weights under a `distribute` rule: each `to` entry's share is
/// split among the localities it covers in proportion to their endpoint
/// counts. Localities no entry covers get 0 (they must not be sent).
pub fn distribute_weights(rule: &LocalityDistribute, localities: &[(Locality, u32)]) -> Vec<u32> {
    let mut weights = vec![0u64; localities.len()];
    for (pattern, share) in &rule.to {
        let covered: Vec<usize> = (0..localities.len())
            .filter(|&i| locality_matches(pattern, &localities[i].0))
            .collect();
        let total: u64 = covered.iter().map(|&i| u64::from(localities[i].1)).sum();
        if total == 0 {
            continue;
        }
        for i in covered {
            // Scaled by 1000 so small shares of large localities stay non-zero.
            let w = u64::from(*share) * 1000 * u64::from(localities[i].1) / total;
            weights[i] += w.max(1);
        }
    }
    weights
        .into_iter()
        .map(|w| u32::try_from(w).unwrap_or(u32::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(r: &str, z: &str) -> Locality {
        Locality {
            region: r.into(),
            zone: z.into(),
            subzone: String::new(),
        }
    }

    fn setting(yaml: &str) -> LocalityLbSetting {
        serde_yaml_ng::from_str(yaml).expect("test setting parses")
    }

    #[test]
    fn default_levels_follow_zone_region_network() {
        let none = BTreeMap::new();
        let me = loc("eu", "a");
        let caller = Point {
            locality: &me,
            network: "n1",
            labels: &none,
        };
        let table = [
            (loc("eu", "a"), "n2", 0),
            (loc("eu", "b"), "n2", 1),
            (loc("us", "a"), "n1", 3),
            (loc("us", "a"), "n2", 4),
        ];
        for (l, net, want) in table {
            let t = Point {
                locality: &l,
                network: net,
                labels: &none,
            };
            assert_eq!(level(&caller, &t, None), want, "{l:?} on {net}");
        }
        let failover = setting("failover:\n- from: eu\n  to: us\n");
        let us = loc("us", "x");
        let t = Point {
            locality: &us,
            network: "n2",
            labels: &none,
        };
        assert_eq!(level(&caller, &t, Some(&failover)), 2);
        let ap = loc("ap", "x");
        let t = Point {
            locality: &ap,
            network: "n2",
            labels: &none,
        };
        assert_eq!(level(&caller, &t, Some(&failover)), 4);
        let off = setting("enabled: false\n");
        assert_eq!(level(&caller, &t, Some(&off)), 0);
    }

    #[test]
    fn failover_priority_counts_leading_matches() {
        let none = BTreeMap::new();
        let s = setting(
            "failoverPriority:\n- topology.istio.io/network\n- topology.kubernetes.io/region\n",
        );
        let me = loc("eu", "a");
        let caller = Point {
            locality: &me,
            network: "n1",
            labels: &none,
        };
        let eu = loc("eu", "z");
        let us = loc("us", "z");
        let lvl = |l: &Locality, n: &str| {
            level(
                &caller,
                &Point {
                    locality: l,
                    network: n,
                    labels: &none,
                },
                Some(&s),
            )
        };
        assert_eq!(lvl(&eu, "n1"), 0);
        assert_eq!(lvl(&us, "n1"), 1);
        assert_eq!(lvl(&eu, "n2"), 2, "the network is compared first");
        let fixed = setting("failoverPriority:\n- topology.istio.io/network=n2\n");
        assert_eq!(
            level(
                &caller,
                &Point {
                    locality: &eu,
                    network: "n2",
                    labels: &none
                },
                Some(&fixed)
            ),
            0
        );
        assert_eq!(
            level(
                &caller,
                &Point {
                    locality: &eu,
                    network: "n1",
                    labels: &none
                },
                Some(&fixed)
            ),
            1
        );
    }

    #[test]
    fn compact_removes_gaps() {
        let m = compact([4, 0, 3, 0]);
        assert_eq!(m.get(&0), Some(&0));
        assert_eq!(m.get(&3), Some(&1));
        assert_eq!(m.get(&4), Some(&2));
    }

    #[test]
    fn distribute_splits_shares() {
        let s = setting("distribute:\n- from: eu/a/*\n  to:\n    eu/a/*: 80\n    eu/b/*: 20\n");
        let rule = distribute_rule(&s, &loc("eu", "a")).expect("rule covers eu/a");
        assert!(distribute_rule(&s, &loc("eu", "b")).is_none());
        let w = distribute_weights(
            rule,
            &[
                (loc("eu", "a"), 2),
                (loc("eu", "b"), 1),
                (loc("us", "c"), 5),
            ],
        );
        assert_eq!(w, vec![80_000, 20_000, 0]);
        assert!(locality_matches("eu", &loc("eu", "q")));
        assert!(!locality_matches("eu/a", &loc("eu", "b")));
    }
}
