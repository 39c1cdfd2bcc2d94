//! A Prometheus server owned by a test: its own temp dir for the TSDB, its
//! own loopback port, a 1 s scrape interval, killed when dropped; and
//! PromQL over its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_multicluster_tests::admin;
use isthmus_multicluster_tests::process::{Managed, Spec};

/// The tool's path, or `None` (test skipped, loudly) when it is missing and
/// `ISTHMUS_ALLOW_SKIP=1`; otherwise a missing tool fails the test: CI
/// installs it (`.ci/run`: Debian package `prometheus`).
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIPPED: `{name}` is not installed (apt-get install prometheus); ISTHMUS_ALLOW_SKIP=1");
            None
        }
        None => panic!(
            "`{name}` is not installed: apt-get install prometheus (CI does in .ci/run), or set ISTHMUS_ALLOW_SKIP=1 to skip"
        ),
    }
}

/// Runs `tool ARGS FILE` and fails with its output unless it succeeds.
pub fn run_tool(tool: &Path, args: &[&str], file: &Path) -> Result<(), String> {
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .map_err(|e| format!("running {}: {e}", tool.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{} {} {}: {}\n{}{}",
        tool.display(),
        args.join(" "),
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// One scrape target with the labels the deploy/monitoring files use.
pub struct Target {
    addr: SocketAddr,
    cluster: String,
    job: &'static str,
}

impl Target {
    pub fn new(addr: SocketAddr, cluster: &str, job: &'static str) -> Target {
        Target {
            addr,
            cluster: cluster.to_string(),
            job,
        }
    }
}

pub struct Prometheus {
    _process: Managed,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    pub async fn start(
        binary: &Path,
        dir: &Path,
        targets: &[Target],
    ) -> Result<Prometheus, String> {
        let mut jobs: std::collections::BTreeMap<&str, Vec<&Target>> = Default::default();
        for t in targets {
            jobs.entry(t.job).or_default().push(t);
        }
        let mut cfg = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
        for (job, ts) in jobs {
            cfg.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: /metrics\n    static_configs:\n"
            ));
            for t in ts {
                cfg.push_str(&format!(
                    "      - targets: [\"{}\"]\n        labels: {{isthmus_cluster: {}}}\n",
                    t.addr, t.cluster
                ));
            }
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, cfg).map_err(|e| format!("writing {}: {e}", config.display()))?;
        // A free loopback port: bound, read, released for Prometheus.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?;
        let spec = Spec::new("prometheus", binary, dir)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let log = spec.log.clone();
        let process = Managed::start(spec).map_err(|e| e.to_string())?;
        let prom = Prometheus {
            _process: process,
            addr,
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if admin::get(addr, "/-/ready").await.is_ok() {
                return Ok(prom);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "Prometheus not ready on {addr} within 30s:\n{}",
                    prom.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs an instant query; the result as JSON (`data.result`).
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let v = admin::get_json(self.addr, &path)
            .await
            .map_err(|e| e.to_string())?;
        if v["status"] != "success" {
            return Err(format!("query failed: {v}"));
        }
        Ok(v["data"]["result"].clone())
    }

    /// The value of a query returning one sample; 0 for an empty result
    /// (`sum` over no series).
    pub async fn value(&self, promql: &str) -> Result<f64, String> {
        let r = self.query(promql).await?;
        let samples = r.as_array().cloned().unwrap_or_default();
        match samples.as_slice() {
            [] => Ok(0.0),
            [one] => one["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no value in {one}")),
            many => Err(format!("{} samples for {promql}", many.len())),
        }
    }

    /// Waits until `promql` evaluates to `want`.
    pub async fn wait_value(
        &self,
        promql: &str,
        want: f64,
        limit: Duration,
    ) -> Result<f64, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let last = self.value(promql).await;
            if let Ok(v) = last {
                if (v - want).abs() < 1e-9 {
                    return Ok(v);
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{promql}: want {want}, last {last:?} after {limit:?}\nPrometheus log:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Percent-encoding of a query parameter (everything but unreserved bytes).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
