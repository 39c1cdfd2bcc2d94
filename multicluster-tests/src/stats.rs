//! Numbers from a load's outcomes: where requests landed, success rate,
//! latency percentiles, and what happened around a fault.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::load::{Failure, Landing, Outcome};

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub total: usize,
    pub ok: usize,
    pub failed: usize,
    pub landings: BTreeMap<Landing, usize>,
    pub failures: BTreeMap<String, usize>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> Summary {
        let mut s = Summary::default();
        let mut latencies = Vec::new();
        for o in outcomes {
            s.total += 1;
            match &o.result {
                Ok(l) => {
                    s.ok += 1;
                    *s.landings.entry(l.clone()).or_default() += 1;
                    latencies.push(o.latency());
                }
                Err(f) => {
                    s.failed += 1;
                    *s.failures.entry(failure_kind(f).to_string()).or_default() += 1;
                }
            }
        }
        latencies.sort();
        s.p50 = percentile(&latencies, 0.50);
        s.p99 = percentile(&latencies, 0.99);
        s.max = latencies.last().copied().unwrap_or_default();
        s
    }

    /// Successful requests that landed in `cluster`, any version.
    pub fn in_cluster(&self, cluster: &str) -> usize {
        self.landings
            .iter()
            .filter(|(l, _)| l.cluster == cluster)
            .map(|(_, n)| n)
            .sum()
    }

    /// Fraction of successful requests that landed in `cluster` (0 when none succeeded).
    pub fn share(&self, cluster: &str) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            self.in_cluster(cluster) as f64 / self.ok as f64
        }
    }

    pub fn success_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.ok as f64 / self.total as f64
        }
    }
}

fn failure_kind(f: &Failure) -> &'static str {
    match f {
        Failure::Connect(_) => "connect",
        Failure::Broken(_) => "broken",
        Failure::Timeout => "timeout",
        Failure::Status(_) => "status",
        Failure::Body(_) => "body",
        Failure::Overload => "overload",
    }
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What happened to traffic around a fault at `at`.
#[derive(Debug, Clone)]
pub struct FaultReport {
    /// Failed requests that started after the fault (the failover's own failures).
    pub failed_after: usize,
    /// Failed requests that were in flight when the fault hit; a crash
    /// resets their connections and only an HTTP retry could save them.
    pub failed_in_flight: usize,
    /// From the fault until the first request started after it succeeded in
    /// `to` (completion time); `None` if that never happened.
    pub time_to_shift: Option<Duration>,
    /// The slowest successful request that started after the fault.
    pub peak_latency: Duration,
    pub after: Summary,
}

pub fn around_fault(outcomes: &[Outcome], at: Instant, to: &str) -> FaultReport {
    let failed_in_flight = outcomes
        .iter()
        .filter(|o| !o.ok() && o.start < at && o.end >= at)
        .count();
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.start >= at).collect();
    let failed_after = after.iter().filter(|o| !o.ok()).count();
    let time_to_shift = after
        .iter()
        .filter(|o| matches!(&o.result, Ok(l) if l.cluster == to))
        .map(|o| o.end.saturating_duration_since(at))
        .min();
    let peak_latency = after
        .iter()
        .filter(|o| o.ok())
        .map(|o| o.latency())
        .max()
        .unwrap_or_default();
    FaultReport {
        failed_after,
        failed_in_flight,
        time_to_shift,
        peak_latency,
        after: Summary::of(after.iter().copied()),
    }
}

/// The first instant from which every successful request (started then or
/// later) landed in `cluster`: when traffic came back after a failback.
pub fn settled_in(outcomes: &[Outcome], cluster: &str) -> Option<Instant> {
    let mut sorted: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok()).collect();
    sorted.sort_by_key(|o| o.start);
    let last_elsewhere = sorted
        .iter()
        .rposition(|o| matches!(&o.result, Ok(l) if l.cluster != cluster));
    let first = match last_elsewhere {
        Some(i) => sorted.get(i + 1),
        None => sorted.first(),
    };
    first.map(|o| o.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(base: Instant, start_ms: u64, end_ms: u64, r: Result<&str, Failure>) -> Outcome {
        Outcome {
            start: base + Duration::from_millis(start_ms),
            end: base + Duration::from_millis(end_ms),
            result: r.map(|c| Landing {
                cluster: c.to_string(),
                version: "v1".to_string(),
            }),
        }
    }

    #[test]
    fn summary_counts_and_percentiles() {
        let b = Instant::now();
        let v = vec![
            o(b, 0, 10, Ok("a")),
            o(b, 0, 20, Ok("a")),
            o(b, 0, 30, Ok("b")),
            o(b, 0, 5, Err(Failure::Connect("refused".into()))),
        ];
        let s = Summary::of(&v);
        assert_eq!((s.total, s.ok, s.failed), (4, 3, 1));
        assert_eq!(s.in_cluster("a"), 2);
        assert!((s.share("a") - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.p50, Duration::from_millis(20));
        assert_eq!(s.p99, Duration::from_millis(30));
        assert_eq!(s.failures.get("connect"), Some(&1));
    }

    #[test]
    fn fault_report_separates_in_flight_losses_and_measures_the_shift() {
        let b = Instant::now();
        let at = b + Duration::from_millis(100);
        let v = vec![
            o(b, 90, 95, Ok("east")),
            o(b, 98, 105, Err(Failure::Broken("reset".into()))),
            o(b, 101, 180, Ok("eu")),
            o(b, 110, 115, Err(Failure::Connect("refused".into()))),
            o(b, 120, 125, Ok("eu")),
        ];
        let r = around_fault(&v, at, "eu");
        assert_eq!(r.failed_in_flight, 1);
        assert_eq!(r.failed_after, 1);
        assert_eq!(r.time_to_shift, Some(Duration::from_millis(25)));
        assert_eq!(r.peak_latency, Duration::from_millis(79));
        assert!(around_fault(&v, at, "nowhere").time_to_shift.is_none());
    }

    #[test]
    fn settled_in_finds_the_start_of_the_last_run() {
        let b = Instant::now();
        let v = vec![
            o(b, 0, 1, Ok("eu")),
            o(b, 10, 11, Ok("east")),
            o(b, 20, 21, Ok("eu")),
            o(b, 30, 31, Ok("east")),
            o(b, 40, 41, Ok("east")),
        ];
        assert_eq!(settled_in(&v, "east"), Some(b + Duration::from_millis(30)));
        assert_eq!(settled_in(&v[..1], "east"), None);
    }
}
