//! Passive outlier detection (Envoy semantics): the consecutive-error
//! detectors here, the success-rate detector in [`success_rate`].
//!
//! Each host keeps lock-free counters. A host is ejected when a detector's
//! consecutive count reaches its threshold and fewer than
//! `max_ejection_percent` of the cluster's hosts are already ejected (one
//! ejection is always allowed when the percentage is positive). The ejection
//! lasts `base_ejection_time × number of ejections`, capped at
//! `max_ejection_time`; the multiplier decays by one per `interval` the host
//! spends un-ejected.

pub mod success_rate;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierConfig;

/// Bumped on every ejection anywhere in the process, so load balancers can
/// cache host health and recompute it only when something changed (an
/// ejection) or an ejection they know of runs out.
static HEALTH_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current health epoch (see [`HEALTH_EPOCH`]).
pub fn health_epoch() -> u64 {
    HEALTH_EPOCH.load(Ordering::Acquire)
}

/// Milliseconds since a process-wide origin, so deadlines fit in atomics.
pub(crate) fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // +1 so that 0 keeps meaning "never".
    Instant::now().saturating_duration_since(origin).as_millis() as u64 + 1
}

/// What happened on one attempt to use a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect refused / timed out / reset before use (local origin).
    LocalOriginFailure,
    /// HTTP 502/503/504 from the upstream.
    GatewayError,
    /// Any other HTTP 5xx.
    ServerError,
}

/// Per-host outlier state.
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_local: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_5xx: AtomicU32,
    ejected_until_ms: AtomicU64,
    last_unejected_ms: AtomicU64,
    ejections: AtomicU32,
    /// Success-rate detector: requests and successes since the cluster's
    /// last evaluation.
    sr_total: AtomicU64,
    sr_success: AtomicU64,
}

impl HostOutlier {
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        until != 0 && now_ms() < until
    }

    /// When the current ejection ends (process clock, see `now_ms`); 0 if never ejected.
    pub(crate) fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// Takes (successes, requests) counted since the last call.
    pub(crate) fn take_success_rate_counts(&self) -> (u64, u64) {
        let total = self.sr_total.swap(0, Ordering::AcqRel);
        let success = self.sr_success.swap(0, Ordering::AcqRel);
        (success.min(total), total)
    }

    /// Ejects the host (success-rate detector); false when it already is
    /// ejected or `max_ejection_percent` forbids it.
    pub fn eject(
        &self,
        cfg: &OutlierConfig,
        ejected_fraction: impl FnOnce() -> (usize, usize),
    ) -> bool {
        self.try_eject(cfg, ejected_fraction)
    }

    fn count_for_success_rate(&self, cfg: &OutlierConfig, outcome: Outcome) {
        if cfg.success_rate.is_none() {
            return;
        }
        match outcome {
            Outcome::Success => {
                self.sr_success.fetch_add(1, Ordering::Relaxed);
            }
            // Split local-origin errors belong to the local-origin detectors.
            Outcome::LocalOriginFailure if cfg.split_external_local_origin_errors => return,
            _ => {}
        }
        self.sr_total.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times the host has been ejected (the backoff multiplier).
    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records an outcome; returns true when this call ejected the host.
    /// `ejected_fraction` reports how many of the cluster's hosts are ejected now.
    pub fn record(
        &self,
        cfg: &OutlierConfig,
        outcome: Outcome,
        ejected_fraction: impl FnOnce() -> (usize, usize),
    ) -> bool {
        self.count_for_success_rate(cfg, outcome);
        match outcome {
            Outcome::Success => {
                self.consecutive_local.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.decay(cfg);
                false
            }
            Outcome::LocalOriginFailure => {
                let local = self.consecutive_local.fetch_add(1, Ordering::Relaxed) + 1;
                if cfg.split_external_local_origin_errors {
                    local >= cfg.consecutive_local_origin_failure
                        && self.try_eject(cfg, ejected_fraction)
                } else {
                    // Unsplit: a connect failure counts as a gateway error and a 5xx.
                    let gw = self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
                    let sx = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                    (gw >= cfg.consecutive_gateway_failure || sx >= cfg.consecutive_5xx)
                        && self.try_eject(cfg, ejected_fraction)
                }
            }
            Outcome::GatewayError => {
                let gw = self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
                let sx = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                (gw >= cfg.consecutive_gateway_failure || sx >= cfg.consecutive_5xx)
                    && self.try_eject(cfg, ejected_fraction)
            }
            Outcome::ServerError => {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                let sx = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                sx >= cfg.consecutive_5xx && self.try_eject(cfg, ejected_fraction)
            }
        }
    }

    fn try_eject(
        &self,
        cfg: &OutlierConfig,
        ejected_fraction: impl FnOnce() -> (usize, usize),
    ) -> bool {
        if self.is_ejected() || cfg.max_ejection_percent == 0 {
            return false;
        }
        let (ejected, total) = ejected_fraction();
        if total == 0 || (ejected * 100) >= (cfg.max_ejection_percent as usize * total) {
            return false;
        }
        self.decay(cfg);
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = cfg
            .base_ejection_time
            .saturating_mul(n)
            .min(cfg.max_ejection_time);
        let until = now_ms() + time.as_millis() as u64;
        self.ejected_until_ms.store(until, Ordering::Release);
        self.last_unejected_ms.store(until, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Lowers the ejection multiplier by one per full interval spent healthy.
    fn decay(&self, cfg: &OutlierConfig) {
        let since = self.last_unejected_ms.load(Ordering::Relaxed);
        if since == 0 || self.is_ejected() || cfg.interval.is_zero() {
            return;
        }
        let healthy_for = Duration::from_millis(now_ms().saturating_sub(since));
        let intervals = (healthy_for.as_millis() / cfg.interval.as_millis().max(1)) as u32;
        if intervals > 0 {
            let cur = self.ejections.load(Ordering::Relaxed);
            self.ejections
                .store(cur.saturating_sub(intervals), Ordering::Relaxed);
            self.last_unejected_ms.store(now_ms(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
            consecutive_5xx: 5,
            consecutive_gateway_failure: 3,
            consecutive_local_origin_failure: 2,
            split_external_local_origin_errors: true,
            success_rate: None,
        }
    }

    #[test]
    fn ejects_after_consecutive_local_failures() {
        let h = HostOutlier::default();
        let c = cfg();
        assert!(!h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
        assert!(h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
        assert!(h.is_ejected());
        assert_eq!(h.ejection_count(), 1);
    }

    #[test]
    fn success_resets_the_streak() {
        let h = HostOutlier::default();
        let c = cfg();
        h.record(&c, Outcome::LocalOriginFailure, || (0, 4));
        h.record(&c, Outcome::Success, || (0, 4));
        assert!(!h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
        assert!(!h.is_ejected());
    }

    #[test]
    fn max_ejection_percent_blocks() {
        let h = HostOutlier::default();
        let c = cfg();
        h.record(&c, Outcome::GatewayError, || (2, 4));
        h.record(&c, Outcome::GatewayError, || (2, 4));
        assert!(!h.record(&c, Outcome::GatewayError, || (2, 4)));
        assert!(!h.is_ejected());
    }

    #[test]
    fn first_ejection_allowed_even_when_percent_small() {
        let h = HostOutlier::default();
        let mut c = cfg();
        c.max_ejection_percent = 10;
        c.consecutive_local_origin_failure = 1;
        assert!(h.record(&c, Outcome::LocalOriginFailure, || (0, 2)));
    }

    #[test]
    fn unsplit_local_failures_count_as_gateway_errors() {
        let h = HostOutlier::default();
        let mut c = cfg();
        c.split_external_local_origin_errors = false;
        assert!(!h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
        assert!(!h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
        assert!(h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
    }

    #[test]
    fn ejection_time_grows_per_ejection_and_expires() {
        let h = HostOutlier::default();
        let mut c = cfg();
        c.consecutive_local_origin_failure = 1;
        c.base_ejection_time = Duration::from_millis(150);
        c.interval = Duration::from_secs(1000);
        let wait_unejected = |h: &HostOutlier| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while h.is_ejected() {
                assert!(std::time::Instant::now() < deadline, "never un-ejected");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // The ejection clock counts whole milliseconds, so an ejection can end
        // up to a millisecond before the exact multiple of the base time.
        let tick = Duration::from_millis(1);
        let t0 = std::time::Instant::now();
        assert!(h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
        wait_unejected(&h);
        assert!(
            t0.elapsed() + tick >= Duration::from_millis(150),
            "first ejection lasts the base time"
        );
        let t1 = std::time::Instant::now();
        assert!(h.record(&c, Outcome::LocalOriginFailure, || (0, 4)));
        assert_eq!(h.ejection_count(), 2);
        wait_unejected(&h);
        assert!(
            t1.elapsed() + tick >= Duration::from_millis(300),
            "second ejection lasts twice the base time"
        );
    }
}
