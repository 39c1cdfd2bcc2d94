//! The failover benchmark (ignored by default; `bench/failover.sh` runs
//! it): the disaster-recovery scenario N times on fresh federations, with
//! time to shift, failed requests and peak latency written into
//! `docs/benchmarks.md` under "Failover (disaster recovery)".

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use isthmus_multicluster_tests::benchdoc::write_section;
use isthmus_multicluster_tests::scenario::{
    bookinfo_http_with_retries, disaster_recovery, DrPlan, DrReport,
};
use isthmus_multicluster_tests::stats::percentile;

const HEADING: &str = "## Failover (disaster recovery)";

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn section(runs: &[DrReport], rate: f64) -> String {
    let mut shift: Vec<Duration> = runs.iter().filter_map(|r| r.fault.time_to_shift).collect();
    let mut peak: Vec<Duration> = runs.iter().map(|r| r.fault.peak_latency).collect();
    let mut lease: Vec<Duration> = runs.iter().map(|r| r.lease_expired_after).collect();
    let mut failback: Vec<Duration> = runs.iter().filter_map(|r| r.failback_after).collect();
    for v in [&mut shift, &mut peak, &mut lease, &mut failback] {
        v.sort();
    }
    let failed_after: usize = runs.iter().map(|r| r.fault.failed_after).sum();
    let in_flight: usize = runs.iter().map(|r| r.fault.failed_in_flight).sum();
    let total: usize = runs.iter().map(|r| r.total.total).sum();
    let leader_runs = runs.iter().filter(|r| r.primary_was_leader).count();
    let no_failback = runs.iter().filter(|r| r.failback_after.is_none()).count();
    let mut s = String::new();
    let _ = writeln!(s, "{HEADING}\n");
    let _ = writeln!(
        s,
        "`multicluster-tests/bench/failover.sh`: {} runs of the disaster-recovery scenario on fresh \
         three-cluster federations on loopback (debug build, 2 shared cores). productpage (us-west) \
         calls reviews over HTTP at {rate:.0} req/s (a new client connection per request; \
         the sidecar pools its mTLS connections; a VirtualService retries connect failures \
         and resets); us-east, which serves it, is killed (kill -9 of every process), \
         eu-central takes over, us-east is restarted after 5 s.\n",
        runs.len()
    );
    let _ = writeln!(s, "| measure | p50 | p99 | max |\n|---|---|---|---|");
    for (name, v) in [
        (
            "time to shift (kill → first answer from eu-central)",
            &shift,
        ),
        ("peak request latency after the kill", &peak),
        ("lease marked expired (seen by us-west)", &lease),
        ("failback (restart → traffic back in us-east)", &failback),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} |",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        );
    }
    let _ = writeln!(
        s,
        "\nRequests: {total} in all; failed after the kill: {failed_after}; failed among those in \
         flight at the kill (cut by the crash; the retry policy re-sends them): {in_flight}. \
         us-east led the federation when it died in {leader_runs} of {} runs (an election comes \
         before the lease can expire; see \"Leases\" in docs/federation.md). Traffic did not \
         settle back in us-east within the run in {no_failback} of {} runs (the failback row \
         covers the others).",
        runs.len(),
        runs.len()
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run bench/failover.sh"]
async fn failover_benchmark() {
    let runs: usize = std::env::var("ISTHMUS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // The 200 req/s; ISTHMUS_SCENARIO_RATE overrides.
    let rate = std::env::var("ISTHMUS_SCENARIO_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200.0);
    let mut reports = Vec::new();
    for i in 0..runs {
        let mut fed = common::start(bookinfo_http_with_retries(), "us-east")
            .await
            .unwrap();
        let r = disaster_recovery(&mut fed, &DrPlan::bookinfo(rate))
            .await
            .unwrap();
        eprintln!(
            "run {}: shift {:?}, failed after {}, in flight {}, peak {:?}, lease {:?}, failback {:?}",
            i + 1,
            r.fault.time_to_shift,
            r.fault.failed_after,
            r.fault.failed_in_flight,
            r.fault.peak_latency,
            r.lease_expired_after,
            r.failback_after
        );
        reports.push(r);
        fed.shutdown().await;
    }
    let text = section(&reports, rate);
    println!("{text}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
    write_section(&path, HEADING, &text).unwrap();
}
