//! The federation dashboard in a real browser: three clusters with HTTP
//! traffic, `isthmus dashboard` merging their control planes' views, the
//! page rendered by headless Chromium. It shows every cluster up and the
//! productpage → reviews edge with its rate; after us-east is killed the
//! page shows us-east down with its lease expired. Screenshots land in
//! `$CARGO_TARGET_TMPDIR/dashboard*.png`.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it); without it the test
//! fails, unless `ISTHMUS_ALLOW_SKIP=1`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_multicluster_tests::admin;
use isthmus_multicluster_tests::process::{Managed, Spec};
use isthmus_multicluster_tests::wait::until;
use isthmus_multicluster_tests::{FederationSpec, Load};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Kills the whole process group of one Chromium run (browser, renderer,
/// crash handler) when dropped, also when the test fails mid-run.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

struct Browser {
    bin: PathBuf,
}

impl Browser {
    /// Runs Chromium headless on `url` with `mode` (`--dump-dom` or
    /// `--screenshot=FILE`), its own profile directory, and JavaScript
    /// timers fast-forwarded by the virtual time budget. Returns stdout.
    async fn run(&self, url: &str, mode: &str) -> Result<String, String> {
        let profile = tempfile::tempdir().map_err(|e| format!("profile dir: {e}"))?;
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--window-size=1280,900",
            // The page polls every second: a few polls' worth, so the
            // dumped DOM is what the page shows after fresh answers.
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let _group = GroupGuard(child.id());
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| "chromium did not finish within 60 s".to_string())?
            .map_err(|e| format!("chromium: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(10).collect();
            return Err(format!(
                "chromium exited with {}: {}",
                out.status,
                tail.join(" | ")
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn dom(&self, url: &str) -> Result<String, String> {
        self.run(url, "--dump-dom").await
    }

    async fn screenshot(&self, url: &str, file: &Path) -> Result<(), String> {
        let _ = std::fs::remove_file(file);
        self.run(url, &format!("--screenshot={}", file.display()))
            .await?;
        let png =
            std::fs::read(file).map_err(|e| format!("no screenshot at {}: {e}", file.display()))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            return Err(format!("{} is not a PNG", file.display()));
        }
        // A blank 1280x900 page compresses to a few KB; a rendered one is larger.
        if png.len() < 20_000 {
            return Err(format!(
                "{} is only {} bytes: nothing rendered?",
                file.display(),
                png.len()
            ));
        }
        Ok(())
    }
}

/// The opening tag of the cluster card of `cluster` in a dumped DOM.
fn card<'a>(dom: &'a str, cluster: &str) -> Option<&'a str> {
    let want = format!("data-cluster=\"{cluster}\"");
    dom.match_indices("<div class=\"card")
        .map(|(i, _)| &dom[i..i + dom[i..].find('>').unwrap_or(0)])
        .find(|tag| tag.contains(&want))
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')?;
    Some(&tag[start..start + end])
}

/// Every cluster's card as (health, lease), or why not.
fn cards(dom: &str, clusters: &[&str]) -> Result<Vec<(String, String)>, String> {
    clusters
        .iter()
        .map(|c| {
            let tag = card(dom, c).ok_or_else(|| format!("no card for {c} in the page"))?;
            Ok((
                attr(tag, "data-health").unwrap_or("").to_string(),
                attr(tag, "data-lease").unwrap_or("").to_string(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_federation_and_a_cluster_going_down() {
    let Some(bin) = find_chromium() else {
        if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: no chromium on PATH (ISTHMUS_ALLOW_SKIP=1)");
            return;
        }
        panic!("the dashboard test needs headless Chromium: `apt-get install chromium` (.ci/run installs it), or set ISTHMUS_ALLOW_SKIP=1 to skip");
    };
    let browser = Browser { bin };

    // HTTP services, so the sidecars count requests (istio_requests_total).
    let mut spec = FederationSpec::bookinfo();
    for c in spec.clusters.iter_mut() {
        for s in c.services.iter_mut() {
            s.protocol = "HTTP".into();
        }
    }
    let mut fed = common::start(spec, "us-east").await.unwrap();
    let clusters = ["us-east", "us-west", "eu-central"];
    let load = Load::start(
        fed.load("us-west", "productpage-v1", "reviews", 20.0)
            .unwrap(),
    );

    // `isthmus dashboard` over the three control planes' admin ports.
    let logs = tempfile::tempdir().unwrap();
    let mut cli = Spec::new("dashboard", fed.binary(), logs.path()).args([
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "500ms",
    ]);
    for c in fed.clusters() {
        cli = cli
            .arg("--control")
            .arg(c.block.control_admin().to_string());
    }
    let dashboard = Managed::start(cli).unwrap();
    let page = until(
        "the dashboard prints its URL",
        Duration::from_secs(20),
        || async {
            let log = std::fs::read_to_string(dashboard.log_path()).unwrap_or_default();
            log.lines()
                .find_map(|l| l.strip_prefix("isthmus dashboard: ").map(str::to_string))
                .ok_or_else(|| format!("log so far: {log}"))
        },
    )
    .await
    .unwrap();
    let addr: std::net::SocketAddr = page
        .trim_start_matches("http://")
        .trim_end_matches("/dashboard/")
        .parse()
        .unwrap();

    // The merged state: every cluster up, a leader, and the edge measured.
    let state = until(
        "all clusters up and productpage → reviews measured",
        Duration::from_secs(40),
        || async {
            let body = admin::get(addr, "/dashboard/state.json")
                .await
                .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            for c in &clusters {
                let h = v["clusters"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["id"] == *c))
                    .map(|x| x["health"].clone());
                if h != Some(Value::from("up")) {
                    return Err(format!("{c}: {h:?}"));
                }
            }
            if v["raft"]["leader"].is_null() {
                return Err("no leader yet".into());
            }
            let edge = v["traffic"]["edges"].as_array().and_then(|a| {
                a.iter()
                    .find(|e| {
                        e["source"] == "productpage-v1"
                            && e["destination"] == REVIEWS
                            && e["rps"].as_f64() > Some(0.0)
                    })
                    .cloned()
            });
            match edge {
                Some(e) => Ok((v.clone(), e)),
                None => Err(format!(
                    "edges: {} errors: {}",
                    v["traffic"]["edges"], v["traffic"]["errors"]
                )),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fed.log_tails(5)));
    let (doc, edge) = state;
    eprintln!("edge: {edge}");
    assert_eq!(edge["sourceCluster"], "us-west");
    assert_eq!(edge["protocol"], "http");
    let success = edge["successRate"]
        .as_f64()
        .expect("an HTTP edge with traffic has a success rate");
    assert!(success > 0.9, "{edge}");
    assert_eq!(doc["sources"].as_array().map(Vec::len), Some(3));
    let reviews = doc["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "reviews"))
        .expect("reviews is exported");
    assert_eq!(
        reviews["instances"].as_array().map(Vec::len),
        Some(2),
        "{reviews}"
    );

    // The control plane's own page (admin port) renders the clusters too.
    let west_admin = fed.cluster("us-west").unwrap().block.control_admin();
    let own = format!("http://{west_admin}/dashboard/");
    let dom = browser.dom(&own).await.unwrap();
    let seen = cards(&dom, &clusters).unwrap_or_else(|e| panic!("{e}\n{dom}"));
    assert!(
        seen.iter().all(|(h, l)| h == "up" && l == "active"),
        "{seen:?}"
    );

    // The merged page: all up, the edge drawn in the graph, a screenshot.
    let dom = browser.dom(&page).await.unwrap();
    let seen = cards(&dom, &clusters).unwrap_or_else(|e| panic!("{e}\n{dom}"));
    assert!(seen.iter().all(|(h, _)| h == "up"), "{seen:?}");
    assert!(
        dom.contains("class=\"edge\" data-source=\"productpage-v1 @ us-west\" data-destination=\"reviews.default.svc.cluster.local\""),
        "no productpage → reviews edge in the graph:\n{dom}"
    );
    assert!(dom.contains("data-leader="), "no Raft leader shown");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    browser
        .screenshot(&page, &shots.join("dashboard.png"))
        .await
        .unwrap();

    // us-east dies: the page shows it down, its lease expired, within the
    // lease TTL (3 s) plus an election and a few polls.
    fed.kill_cluster("us-east").await.unwrap();
    let dom = until(
        "the page shows us-east down",
        Duration::from_secs(40),
        || async {
            let dom = browser.dom(&page).await?;
            let seen = cards(&dom, &clusters)?;
            match &seen[0] {
                (h, l) if h == "down" && l == "expired" => Ok(dom),
                other => Err(format!("us-east shows {other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fed.log_tails(5)));
    let seen = cards(&dom, &clusters).unwrap();
    assert_eq!(seen[1].0, "up", "us-west: {seen:?}");
    assert_eq!(seen[2].0, "up", "eu-central: {seen:?}");
    let leader_tag = dom
        .find("data-leader=\"")
        .map(|i| &dom[i..])
        .and_then(|t| attr(t, "data-leader"));
    assert!(
        matches!(leader_tag, Some(l) if l != "us-east"),
        "the survivors' leader should be shown, got {leader_tag:?}"
    );
    assert!(
        dom.contains("(not answering)"),
        "us-east's control plane should be flagged as not answering"
    );
    browser
        .screenshot(&page, &shots.join("dashboard-after-kill.png"))
        .await
        .unwrap();
    eprintln!("screenshots: {}", shots.join("dashboard*.png").display());

    drop(load);
    drop(dashboard);
    fed.shutdown().await;
}
