//! The failover benchmark (ignored by default; `bench/failover.sh` runs
//! it): the disaster-recovery scenario N times on fresh federations, with
//! time to shift, failed requests and peak latency written into
//! `docs/benchmarks.md` under "Failover (disaster recovery)".

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use isthmus_multicluster_tests::scenario::{disaster_recovery, DrPlan, DrReport};
use isthmus_multicluster_tests::stats::percentile;
use isthmus_multicluster_tests::FederationSpec;

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
    let mut s = String::new();
    let _ = writeln!(s, "{HEADING}\n");
    let _ = writeln!(
        s,
        "`multicluster-tests/bench/failover.sh`: {} runs of the disaster-recovery scenario on fresh \
         three-cluster federations on loopback (debug build, 2 shared cores). productpage (us-west) \
         calls reviews at {rate:.0} req/s, one TCP connection and mTLS handshake per request; \
         us-east, which serves it, is killed (kill -9 of every process), eu-central takes over, \
         us-east is restarted after 5 s.\n",
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
        "\nRequests: {total} in all; failed after the kill: {failed_after}; lost in flight at the kill \
         (connections reset by the crash, which only an HTTP retry could save): {in_flight}. \
         us-east led the federation when it died in {leader_runs} of {} runs (an election comes \
         before the lease can expire).",
        runs.len()
    );
    s
}

/// Replaces (or appends) our section, leaving every other section alone.
fn write_section(path: &Path, section: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let new = match old.find(HEADING) {
        Some(start) => {
            let rest = &old[start + HEADING.len()..];
            let end = rest
                .find("\n## ")
                .map(|i| start + HEADING.len() + i + 1)
                .unwrap_or(old.len());
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!(
            "{}\n{}",
            old.trim_end_matches('\n').to_string() + "\n",
            section
        ),
    };
    std::fs::write(path, new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run bench/failover.sh"]
async fn failover_benchmark() {
    let runs: usize = std::env::var("ISTHMUS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rate = common::rate();
    let mut reports = Vec::new();
    for i in 0..runs {
        let mut fed = common::start(FederationSpec::bookinfo(), "us-east")
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
    write_section(&path, &text).unwrap();
}

#[test]
fn section_replacement_keeps_other_sections() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.md");
    std::fs::write(&p, "# Benchmarks\n\n## Other\nkeep me\n").unwrap();
    write_section(&p, &format!("{HEADING}\n\nfirst\n")).unwrap();
    write_section(&p, &format!("{HEADING}\n\nsecond\n")).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("keep me"), "{text}");
    assert!(text.contains("second") && !text.contains("first"), "{text}");
    std::fs::write(
        &p,
        format!("# Benchmarks\n\n{HEADING}\n\nold\n\n## After\nstays\n"),
    )
    .unwrap();
    write_section(&p, &format!("{HEADING}\n\nnew\n\n")).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.contains("new") && !text.contains("old") && text.contains("## After\nstays"),
        "{text}"
    );
}
