//! Envoy's priority and locality arithmetic, as pure functions.
//!
//! A priority's health is `min(100, overprovisioning × healthy / total)`
//! percent. Priorities take load in order: each gets its health (normalised
//! so the sum is 100 when the total health is below 100) until 100 % is
//! allocated. So with the default factor 1.4, a priority with ≥ 72 % healthy
//! hosts keeps all traffic, and traffic spills to the next priority as it
//! loses hosts.

/// Health percent (0..=100) of a set with `healthy` of `total` hosts.
pub fn health_percent(healthy: usize, total: usize, overprovisioning_percent: u32) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let h = healthy as f64 * overprovisioning_percent as f64 / total as f64;
    h.min(100.0)
}

/// Per-priority load percentages for the given per-priority health
/// percentages. Returns `None` when nothing is healthy (panic routing).
pub fn priority_loads(health: &[f64]) -> Option<Vec<f64>> {
    let zeros = vec![0.0; health.len()];
    priority_loads_with_degraded(health, &zeros).map(|(h, _)| h)
}

/// Envoy's split of traffic over (healthy, degraded) hosts per priority:
/// healthy availability is allocated first in priority order, degraded
/// hosts only get what healthy ones cannot carry. `None` when neither has
/// any availability (panic routing).
pub fn priority_loads_with_degraded(
    healthy: &[f64],
    degraded: &[f64],
) -> Option<(Vec<f64>, Vec<f64>)> {
    let total: f64 = healthy.iter().chain(degraded).sum();
    if total <= 0.0 {
        return None;
    }
    let normalized_total = total.min(100.0);
    let mut remaining = 100.0;
    let mut alloc = |avail: &[f64]| -> Vec<f64> {
        avail
            .iter()
            .map(|h| {
                let share = (h * 100.0 / normalized_total).min(remaining);
                remaining -= share;
                share
            })
            .collect()
    };
    let h = alloc(healthy);
    let d = alloc(degraded);
    Some((h, d))
}

/// Effective locality weight: configured weight × locality availability.
pub fn locality_effective_weight(
    weight: u32,
    healthy: usize,
    total: usize,
    overprovisioning_percent: u32,
) -> f64 {
    weight as f64 * health_percent(healthy, total, overprovisioning_percent) / 100.0
}

/// Picks an index from cumulative-free weights with `r` in `[0, 1)`.
pub fn pick_weighted(weights: &[f64], r: f64) -> Option<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = r * total;
    for (i, w) in weights.iter().enumerate() {
        if *w <= 0.0 {
            continue;
        }
        if x < *w {
            return Some(i);
        }
        x -= w;
    }
    // Rounding at the top end: the last positive weight.
    weights.iter().rposition(|w| *w > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn envoy_priority_table() {
        // Cases from Envoy's "Priority levels" documentation (factor 1.4).
        // (healthy, total) per priority → expected load per priority.
        type Case<'a> = (&'a [(usize, usize)], &'a [f64]);
        let cases: &[Case<'_>] = &[
            (&[(10, 10), (10, 10)], &[100.0, 0.0]),
            (&[(8, 10), (10, 10)], &[100.0, 0.0]),
            (&[(7, 10), (10, 10)], &[98.0, 2.0]),
            (&[(5, 10), (10, 10)], &[70.0, 30.0]),
            (&[(2, 10), (10, 10)], &[28.0, 72.0]),
            (&[(0, 10), (10, 10)], &[0.0, 100.0]),
            (&[(0, 10), (5, 10), (10, 10)], &[0.0, 70.0, 30.0]),
        ];
        for (hosts, want) in cases {
            let health: Vec<f64> = hosts
                .iter()
                .map(|(h, t)| health_percent(*h, *t, 140))
                .collect();
            approx(&priority_loads(&health).expect("healthy"), want);
        }
    }

    #[test]
    fn normalises_when_total_health_is_low() {
        // 2/10 and 3/10 healthy: health 28 and 42, total 70 → 40 % and 60 %.
        let health = [health_percent(2, 10, 140), health_percent(3, 10, 140)];
        approx(&priority_loads(&health).expect("healthy"), &[40.0, 60.0]);
    }

    #[test]
    fn degraded_hosts_only_take_what_healthy_cannot() {
        // P0: 5/10 healthy, 5/10 degraded; P1 all healthy.
        let healthy = [health_percent(5, 10, 140), health_percent(10, 10, 140)];
        let degraded = [health_percent(5, 10, 140), 0.0];
        let (h, d) = priority_loads_with_degraded(&healthy, &degraded).expect("loads");
        approx(&h, &[70.0, 30.0]);
        approx(&d, &[0.0, 0.0]);
        // No healthy host anywhere: degraded hosts carry the traffic.
        let (h, d) =
            priority_loads_with_degraded(&[0.0], &[health_percent(1, 2, 140)]).expect("loads");
        approx(&h, &[0.0]);
        approx(&d, &[100.0]);
    }

    #[test]
    fn nothing_healthy_is_panic() {
        assert!(priority_loads(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn locality_weights_scale_with_availability() {
        assert!((locality_effective_weight(2, 1, 2, 140) - 1.4).abs() < 1e-9);
        assert!((locality_effective_weight(2, 2, 2, 140) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn weighted_pick_covers_all_and_skips_zero() {
        let w = [1.0, 0.0, 3.0];
        assert_eq!(pick_weighted(&w, 0.0), Some(0));
        assert_eq!(pick_weighted(&w, 0.24), Some(0));
        assert_eq!(pick_weighted(&w, 0.26), Some(2));
        assert_eq!(pick_weighted(&w, 0.999_999), Some(2));
        assert_eq!(pick_weighted(&[0.0], 0.5), None);
    }
}
