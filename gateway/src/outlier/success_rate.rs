//! Envoy's success-rate outlier detector.
//!
//! Once per `interval` the hosts of a cluster that carried at least
//! `request_volume` requests since the last evaluation are compared: if
//! there are at least `minimum_hosts` of them, a host whose success rate is
//! below `mean − (stdev_factor / 1000) × stdev` is ejected with probability
//! `enforcing`% (subject to `max_ejection_percent`, like every detector).
//! The evaluation runs lazily on the request path when the interval has
//! passed: exactly one caller wins the interval (a compare-and-swap), the
//! others pay one atomic load.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

use super::now_ms;
use crate::config::{OutlierConfig, SuccessRateConfig};
use crate::lb::LoadBalancer;

/// Per-cluster evaluation clock (lives in the cluster's balancer).
#[derive(Debug, Default)]
pub struct Clock {
    next_ms: AtomicU64,
}

impl Clock {
    /// True for exactly one caller per interval.
    fn due(&self, interval_ms: u64) -> bool {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Acquire);
        if next == 0 {
            // First use starts the first interval; counts gathered until now
            // are part of it.
            let _ = self.next_ms.compare_exchange(
                0,
                now + interval_ms,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return false;
        }
        now >= next
            && self
                .next_ms
                .compare_exchange(next, now + interval_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// The success-rate threshold of one evaluation: `None` when too few hosts
/// had enough requests. `rates` are per-host success rates in percent.
pub fn threshold(rates: &[f64], cfg: &SuccessRateConfig) -> Option<f64> {
    if rates.is_empty() || rates.len() < cfg.minimum_hosts as usize {
        return None;
    }
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    Some(mean - f64::from(cfg.stdev_factor) / 1000.0 * variance.sqrt())
}

/// Indices of `counts` (successes, requests) below the threshold.
pub fn outliers(counts: &[(u64, u64)], cfg: &SuccessRateConfig) -> Vec<usize> {
    let eligible: Vec<(usize, f64)> = counts
        .iter()
        .enumerate()
        .filter(|(_, (_, total))| *total >= u64::from(cfg.request_volume))
        .map(|(i, (ok, total))| (i, *ok as f64 * 100.0 / *total as f64))
        .collect();
    let rates: Vec<f64> = eligible.iter().map(|(_, r)| *r).collect();
    let Some(limit) = threshold(&rates, cfg) else {
        return Vec::new();
    };
    eligible
        .into_iter()
        .filter(|(_, r)| *r < limit)
        .map(|(i, _)| i)
        .collect()
}

/// Runs the detector for `lb` if its interval has passed; returns the
/// addresses it ejected.
pub fn evaluate(lb: &LoadBalancer, cfg: &OutlierConfig) -> Vec<std::net::SocketAddr> {
    let Some(sr) = &cfg.success_rate else {
        return Vec::new();
    };
    let interval_ms = (cfg.interval.as_millis() as u64).max(1);
    if !lb.success_rate_clock().due(interval_ms) {
        return Vec::new();
    }
    let hosts = lb.hosts();
    let counts: Vec<(u64, u64)> = hosts
        .iter()
        .map(|h| h.stats.outlier.take_success_rate_counts())
        .collect();
    let mut ejected = Vec::new();
    let mut rng = rand::rng();
    for i in outliers(&counts, sr) {
        if sr.enforcing < 100 && rng.random_range(0..100) >= sr.enforcing {
            continue;
        }
        let host = &hosts[i];
        if host.stats.outlier.eject(cfg, || lb.ejected_fraction()) {
            ejected.push(host.addr);
        }
    }
    ejected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SuccessRateConfig {
        SuccessRateConfig {
            minimum_hosts: 5,
            request_volume: 100,
            stdev_factor: 1900,
            enforcing: 100,
        }
    }

    #[test]
    fn one_bad_host_among_five_is_an_outlier() {
        let mut counts = vec![(100, 100); 4];
        counts.push((40, 100));
        assert_eq!(outliers(&counts, &cfg()), vec![4]);
    }

    #[test]
    fn uniform_rates_have_no_outlier() {
        let counts = vec![(90, 100); 6];
        assert!(outliers(&counts, &cfg()).is_empty());
    }

    #[test]
    fn too_few_hosts_with_enough_volume() {
        // Five hosts, but one carried fewer than request_volume requests.
        let counts = vec![(100, 100), (100, 100), (100, 100), (0, 100), (99, 99)];
        assert!(outliers(&counts, &cfg()).is_empty());
        let mut c = cfg();
        c.minimum_hosts = 4;
        // Among four hosts no rate lies 1.9 standard deviations out
        // (at most √3 can): a lower factor catches the failing one.
        assert!(outliers(&counts, &c).is_empty());
        c.stdev_factor = 1000;
        assert_eq!(outliers(&counts, &c), vec![3]);
    }

    #[test]
    fn stdev_factor_sets_the_bar() {
        // Rates 100,100,100,100,80: mean 96, stdev 8.
        let counts = vec![(100, 100), (100, 100), (100, 100), (100, 100), (80, 100)];
        let mut c = cfg();
        c.stdev_factor = 1900; // 96 − 15.2 = 80.8 → 80 is below.
        assert_eq!(outliers(&counts, &c), vec![4]);
        c.stdev_factor = 2100; // 96 − 16.8 = 79.2 → 80 is not.
        assert!(outliers(&counts, &c).is_empty());
        let t = threshold(&[100.0, 100.0, 100.0, 100.0, 80.0], &cfg()).expect("five hosts");
        assert!((t - 80.8).abs() < 1e-9, "threshold {t}");
    }

    #[test]
    fn clock_fires_once_per_interval() {
        let c = Clock::default();
        assert!(!c.due(60_000), "first use only starts the interval");
        assert!(!c.due(60_000));
        let c = Clock::default();
        assert!(!c.due(0));
        // With a zero-length interval every later call is due.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(c.due(0));
    }
}
