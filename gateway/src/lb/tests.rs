use std::collections::HashMap;
use std::net::SocketAddr;

use super::*;
use crate::config::{EndpointConfig, LocalityEndpoints};

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 1000 + i))
}

fn la(groups: &[(u32, Option<u32>, &[u16])]) -> LoadAssignment {
    LoadAssignment {
        cluster_name: "c".into(),
        localities: groups
            .iter()
            .enumerate()
            .map(|(n, (prio, weight, hosts))| LocalityEndpoints {
                locality: LocalityName {
                    region: "r".into(),
                    zone: format!("z{n}"),
                    sub_zone: String::new(),
                },
                priority: *prio,
                weight: *weight,
                endpoints: hosts
                    .iter()
                    .map(|h| EndpointConfig {
                        address: addr(*h),
                        weight: 1,
                        health: Health::Healthy,
                        workload: None,
                    })
                    .collect(),
            })
            .collect(),
        overprovisioning_factor: 140,
    }
}

fn eject(lb: &LoadBalancer, a: SocketAddr) {
    let cfg = crate::config::OutlierConfig {
        interval: std::time::Duration::from_secs(10),
        base_ejection_time: std::time::Duration::from_secs(30),
        max_ejection_time: std::time::Duration::from_secs(300),
        max_ejection_percent: 100,
        consecutive_5xx: 1,
        consecutive_gateway_failure: 1,
        consecutive_local_origin_failure: 1,
        split_external_local_origin_errors: true,
        success_rate: None,
    };
    let h = lb.hosts().iter().find(|h| h.addr == a).expect("host");
    assert!(h
        .stats
        .outlier
        .record(&cfg, crate::outlier::Outcome::LocalOriginFailure, || (
            0, 100
        )));
}

fn counts(lb: &LoadBalancer, n: usize) -> HashMap<SocketAddr, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        *m.entry(lb.pick(None, &[]).expect("host").addr).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_cycles() {
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &la(&[(0, None, &[1, 2, 3])]), None);
    let c = counts(&lb, 300);
    assert_eq!(c.len(), 3);
    assert!(c.values().all(|v| *v == 100), "{c:?}");
}

#[test]
fn failover_to_next_priority_when_p0_ejected() {
    let lb = LoadBalancer::new(
        LbPolicy::RoundRobin,
        &la(&[(0, None, &[1]), (1, None, &[2])]),
        None,
    );
    assert_eq!(counts(&lb, 50).get(&addr(1)), Some(&50));
    eject(&lb, addr(1));
    let c = counts(&lb, 50);
    assert_eq!(c.get(&addr(2)), Some(&50), "{c:?}");
}

#[test]
fn partial_priority_spills_by_overprovisioning() {
    // P0: 1 of 2 healthy → health 70 → 70 % P0, 30 % P1.
    let lb = LoadBalancer::new(
        LbPolicy::Random,
        &la(&[(0, None, &[1, 2]), (1, None, &[3])]),
        None,
    );
    eject(&lb, addr(1));
    let loads = lb.priority_load().expect("loads");
    assert!(
        (loads[0] - 70.0).abs() < 1e-9 && (loads[1] - 30.0).abs() < 1e-9,
        "{loads:?}"
    );
    let c = counts(&lb, 4000);
    let p1 = *c.get(&addr(3)).unwrap_or(&0) as f64 / 4000.0;
    assert!((0.25..0.35).contains(&p1), "P1 share {p1}");
    assert_eq!(c.get(&addr(1)), None);
}

#[test]
fn all_unhealthy_panics_to_p0() {
    let lb = LoadBalancer::new(
        LbPolicy::RoundRobin,
        &la(&[(0, None, &[1]), (1, None, &[2])]),
        None,
    );
    eject(&lb, addr(1));
    eject(&lb, addr(2));
    assert_eq!(lb.pick(None, &[]).expect("panic host").addr, addr(1));
}

#[test]
fn locality_weights_split_traffic() {
    let lb = LoadBalancer::new(
        LbPolicy::RoundRobin,
        &la(&[(0, Some(3), &[1]), (0, Some(1), &[2])]),
        None,
    );
    let c = counts(&lb, 4000);
    let a = *c.get(&addr(1)).unwrap_or(&0) as f64 / 4000.0;
    assert!((0.70..0.80).contains(&a), "locality share {a}");
}

#[test]
fn least_request_prefers_idle_host() {
    let lb = LoadBalancer::new(LbPolicy::LeastRequest, &la(&[(0, None, &[1, 2])]), None);
    lb.hosts()[0].stats.active.store(100, Ordering::Relaxed);
    let c = counts(&lb, 1000);
    // P2C picks the busy host only when both draws hit it (~25 %).
    let busy = *c.get(&addr(1)).unwrap_or(&0);
    assert!(busy < 350, "busy host picked {busy} times");
}

#[test]
fn ring_hash_is_sticky_and_skips_ejected() {
    let lb = LoadBalancer::new(LbPolicy::RingHash, &la(&[(0, None, &[1, 2, 3, 4])]), None);
    let h = ring_hash::hash64(b"10.1.1.1");
    let first = lb.pick(Some(h), &[]).expect("host").addr;
    for _ in 0..20 {
        assert_eq!(lb.pick(Some(h), &[]).expect("host").addr, first);
    }
    eject(&lb, first);
    let second = lb.pick(Some(h), &[]).expect("host").addr;
    assert_ne!(second, first);
}

#[test]
fn maglev_is_sticky() {
    let lb = LoadBalancer::new(LbPolicy::Maglev, &la(&[(0, None, &[1, 2, 3])]), None);
    let h = ring_hash::hash64(b"key");
    let first = lb.pick(Some(h), &[]).expect("host").addr;
    assert!((0..20).all(|_| lb.pick(Some(h), &[]).map(|x| x.addr) == Some(first)));
}

#[test]
fn rebuild_keeps_host_state() {
    let a = la(&[(0, None, &[1, 2])]);
    let lb1 = LoadBalancer::new(LbPolicy::RoundRobin, &a, None);
    eject(&lb1, addr(1));
    let lb2 = LoadBalancer::new(
        LbPolicy::RoundRobin,
        &la(&[(0, None, &[1, 2, 3])]),
        Some(&lb1),
    );
    assert!(lb2.hosts()[0].stats.outlier.is_ejected());
}

#[test]
fn exclude_skips_tried_hosts() {
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &la(&[(0, None, &[1, 2])]), None);
    for _ in 0..10 {
        assert_eq!(lb.pick(None, &[addr(1)]).expect("host").addr, addr(2));
    }
}

#[test]
fn excluding_a_whole_priority_moves_to_the_next_in_order_balanced() {
    // Localities listed out of priority order on purpose.
    for policy in [
        LbPolicy::RoundRobin,
        LbPolicy::LeastRequest,
        LbPolicy::RingHash,
    ] {
        let lb = LoadBalancer::new(
            policy,
            &la(&[(2, None, &[9]), (0, None, &[1]), (1, None, &[5, 6])]),
            None,
        );
        let mut seen = HashMap::new();
        for i in 0..200u64 {
            let h = lb
                .pick(Some(ring_hash::hash64(&i.to_le_bytes())), &[addr(1)])
                .expect("host");
            *seen.entry(h.addr).or_insert(0) += 1;
        }
        assert_eq!(
            seen.get(&addr(9)),
            None,
            "{policy:?}: priority 1 first: {seen:?}"
        );
        assert!(
            seen.contains_key(&addr(5)) && seen.contains_key(&addr(6)),
            "{policy:?}: balanced over priority 1: {seen:?}"
        );
        for _ in 0..20 {
            let h = lb.pick(None, &[addr(1), addr(5), addr(6)]).expect("host");
            assert_eq!(h.addr, addr(9), "{policy:?}");
        }
        assert!(lb
            .pick(None, &[addr(1), addr(5), addr(6), addr(9)])
            .is_none());
    }
}

#[test]
fn degraded_hosts_take_traffic_only_when_healthy_ones_cannot() {
    // 3 of 4 healthy: healthy availability 3/4 × 1.4 ≥ 100 %, so the
    // degraded host gets nothing.
    let mut a = la(&[(0, None, &[1, 2, 3, 4])]);
    a.localities[0].endpoints[3].health = Health::Degraded;
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &a, None);
    let c = counts(&lb, 300);
    assert_eq!(c.get(&addr(4)), None, "{c:?}");
    // 1 of 4 healthy: 35 % healthy, 35 % degraded availability → the
    // healthy host takes half, the degraded host the other half.
    eject(&lb, addr(1));
    eject(&lb, addr(2));
    let loads = lb.loads().expect("loads");
    assert!(
        (loads.0[0] - 50.0).abs() < 1e-9 && (loads.1[0] - 50.0).abs() < 1e-9,
        "{loads:?}"
    );
    // No healthy host left: all traffic to the degraded one.
    eject(&lb, addr(3));
    let c = counts(&lb, 100);
    assert_eq!(c.get(&addr(4)), Some(&100), "{c:?}");
}

/// Health is cached between changes: picks reuse one view until an
/// ejection happens or an ejection runs out, and both are seen at once.
#[test]
fn cached_health_follows_ejections_and_their_expiry() {
    let lb = LoadBalancer::new(LbPolicy::RoundRobin, &la(&[(0, None, &[1, 2])]), None);
    let first = lb.health();
    assert!(
        Arc::ptr_eq(&first, &lb.health()),
        "unchanged health is not recomputed"
    );
    let cfg = crate::config::OutlierConfig {
        interval: std::time::Duration::from_secs(10),
        base_ejection_time: std::time::Duration::from_millis(100),
        max_ejection_time: std::time::Duration::from_secs(300),
        max_ejection_percent: 100,
        consecutive_5xx: 1,
        consecutive_gateway_failure: 1,
        consecutive_local_origin_failure: 1,
        split_external_local_origin_errors: true,
        success_rate: None,
    };
    let h = lb.hosts().iter().find(|h| h.addr == addr(1)).expect("host");
    assert!(h
        .stats
        .outlier
        .record(&cfg, crate::outlier::Outcome::LocalOriginFailure, || (0, 2)));
    let c = counts(&lb, 20);
    assert_eq!(c.get(&addr(1)), None, "ejected host picked: {c:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let c = counts(&lb, 20);
        if c.contains_key(&addr(1)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ejection never ran out in the cached view"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
