//! Federation registry vs etcd, in one run on the same machine: write
//! throughput and commit latency (p50/p99) of a 3-member cluster on
//! loopback with 1 and 1,000 concurrent writers, and the longest gap in
//! acknowledged writes when the leader is killed with SIGKILL. Both systems
//! fsync, use a 100 ms heartbeat and a 1 s election timeout with pre-vote,
//! and are driven by the same load generator (`load.rs`): 8-byte keys,
//! 256-byte values, 1,000 distinct keys.
//!
//! `cargo bench -p isthmus-federation --bench registry_vs_etcd`; needs
//! `etcd` and `etcdctl` on PATH (Debian: etcd-server, etcd-client) for the
//! etcd half. BENCH_SECS sets each load's length (default 8), BENCH_OUT a
//! file for the Markdown table. BENCH_QUICK=1 runs only Isthmus with 1
//! writer (for profiling the write path; no table). `-- --test` only checks
//! that it builds.

mod etcd;
mod isthmus;
mod load;
mod pki;
mod procs;

use load::LoadResult;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
}

/// etcd's defaults: 100 ms heartbeat, 1 s election timeout.
const TIMING: Timing = Timing {
    tick: Duration::from_millis(50),
    heartbeat_ticks: 2,
    election_ticks: 20,
};
const FAILOVER_WRITERS: usize = 100;
const KILL_AFTER: Duration = Duration::from_secs(3);
const FAILOVER_LOAD: Duration = Duration::from_secs(9);

#[derive(Default)]
struct Results {
    /// Scenario, Isthmus result, etcd result.
    rows: Vec<(String, Option<LoadResult>, Option<LoadResult>)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var("BENCH_ROLE").as_deref() == Ok("isthmus-node") {
        let run = || -> Result<(), String> {
            let id = std::env::var("BENCH_ID").map_err(|e| e.to_string())?;
            let id: u64 = id.parse().map_err(|_| "bad BENCH_ID")?;
            let dir = PathBuf::from(std::env::var("BENCH_DIR").map_err(|e| e.to_string())?);
            isthmus::child(id, dir, TIMING)
        };
        if let Err(e) = run() {
            eprintln!("isthmus bench node: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        println!("registry_vs_etcd: built (run without --test to measure)");
        return;
    }
    let outcome = tempdir().and_then(|dir| {
        // Every child process is killed when its handle drops inside
        // `drive`, before the directory goes, also on failure.
        let r = drive(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        r
    });
    if let Err(e) = outcome {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

fn drive(dir: &std::path::Path) -> Result<(), String> {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let load_time = Duration::from_secs(secs);
    let mut results = Results::default();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let scenarios: &[usize] = if quick { &[1] } else { &[1, 1000] };

    println!("== Isthmus federation registry (3 processes, QUIC + mTLS, fsync) ==");
    let mut isth = Vec::new();
    {
        let mut c = isthmus::Cluster::start(&dir.join("isthmus"))?;
        let leader = c.leader(Duration::from_secs(30))?;
        for &w in scenarios {
            c.start_load(leader, w, load_time)?;
            let r = c.result(leader, load_time + Duration::from_secs(120))?;
            println!("{w} writers: {}", line(&r));
            isth.push(r);
        }
        if quick {
            return Ok(());
        }
        let follower = isthmus::IDS
            .into_iter()
            .find(|i| *i != leader)
            .ok_or("no follower")?;
        c.start_load(follower, FAILOVER_WRITERS, FAILOVER_LOAD)?;
        std::thread::sleep(KILL_AFTER);
        c.kill(leader);
        let r = c.result(follower, FAILOVER_LOAD + Duration::from_secs(120))?;
        println!(
            "failover ({FAILOVER_WRITERS} writers via a follower): {}",
            line(&r)
        );
        isth.push(r);
    }

    let mut etc = Vec::new();
    if which("etcd") && which("etcdctl") {
        println!(
            "== etcd {} (3 processes, plain HTTP/2 peers, fsync) ==",
            etcd_version()
        );
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let mut c = etcd::Cluster::start(&dir.join("etcd"), TIMING)?;
        let leader = c.leader(Duration::from_secs(30))?;
        for &w in scenarios {
            let ep = c.clients[&leader].clone();
            let r = rt.block_on(async {
                let store = etcd::Etcd::connect(&ep, w.div_ceil(100)).await?;
                Ok::<_, String>(load::run(Arc::new(store), w, load_time).await)
            })?;
            println!("{w} writers: {}", line(&r));
            etc.push(r);
        }
        let follower = c
            .clients
            .keys()
            .copied()
            .find(|i| *i != leader)
            .ok_or("no follower")?;
        let ep = c.clients[&follower].clone();
        let store = rt.block_on(etcd::Etcd::connect(&ep, 1))?;
        let run = rt.spawn(load::run(Arc::new(store), FAILOVER_WRITERS, FAILOVER_LOAD));
        std::thread::sleep(KILL_AFTER);
        c.kill(leader);
        let r = rt.block_on(run).map_err(|e| e.to_string())?;
        println!(
            "failover ({FAILOVER_WRITERS} writers via a follower): {}",
            line(&r)
        );
        etc.push(r);
    } else {
        println!(
            "etcd/etcdctl not on PATH: install etcd-server and etcd-client for the comparison"
        );
    }

    let names = [
        "1 writer".to_string(),
        "1,000 writers".to_string(),
        format!("leader kill -9, {FAILOVER_WRITERS} writers via a follower"),
    ];
    for (i, n) in names.iter().enumerate() {
        results
            .rows
            .push((n.clone(), isth.get(i).cloned(), etc.get(i).cloned()));
    }
    let table = markdown(&results);
    println!("\n{table}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(&out, &table).map_err(|e| format!("cannot write {out}: {e}"))?;
    }
    Ok(())
}

fn line(r: &LoadResult) -> String {
    format!(
        "{:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, max ack gap {:.0} ms, {} ok, {} errors{}",
        r.per_sec(),
        r.p50_ms,
        r.p99_ms,
        r.max_gap_ms,
        r.ops,
        r.errors,
        r.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

type Metric = Box<dyn Fn(&LoadResult) -> f64>;

fn markdown(r: &Results) -> String {
    let mut s = String::from(
        "| scenario | metric | Isthmus | etcd | Isthmus / etcd |\n|---|---|---|---|---|\n",
    );
    for (name, i, e) in &r.rows {
        let metrics: Vec<(&str, Metric)> = if name.contains("kill") {
            vec![(
                "longest gap in acks (ms)",
                Box::new(|x: &LoadResult| x.max_gap_ms),
            )]
        } else {
            vec![
                ("writes/s", Box::new(|x: &LoadResult| x.per_sec())),
                (
                    "p50 commit latency (ms)",
                    Box::new(|x: &LoadResult| x.p50_ms),
                ),
                (
                    "p99 commit latency (ms)",
                    Box::new(|x: &LoadResult| x.p99_ms),
                ),
            ]
        };
        for (m, f) in metrics {
            let iv = i.as_ref().map(&f);
            let ev = e.as_ref().map(&f);
            let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("—".into());
            let rt = match (iv, ev) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "—".into(),
            };
            s.push_str(&format!(
                "| {name} | {m} | {} | {} | {rt} |\n",
                fmt(iv),
                fmt(ev)
            ));
        }
    }
    s
}

fn which(bin: &str) -> bool {
    // Spawning at all is the test: etcdctl 3.4 has no `--version` flag.
    std::process::Command::new(bin)
        .arg("--help")
        .output()
        .is_ok()
}

fn etcd_version() -> String {
    std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string())
        })
        .unwrap_or_default()
}

fn tempdir() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("isthmus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}
