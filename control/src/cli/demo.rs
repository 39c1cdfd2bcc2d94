//! `isthmus demo`: three clusters from `deploy/examples` on loopback,
//! traffic through us-west's ingress gateway to productpage, which calls
//! reviews in the other clusters, a live table of where
//! requests land, and the disaster-recovery scenario (us-east dies, traffic
//! moves to eu-central, comes back when us-east returns).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use isthmus_multicluster_tests::{
    around_fault, spec::Block, ConfigSource, Federation, FederationSpec, Landing, Load, LoadConfig,
    Outcome, Summary, READY_LIMIT,
};
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

mod view;

use view::{Event, Row};

/// The cluster serving us-west's traffic, the one the scenario kills.
const PRIMARY: &str = "us-east";
const BACKUP: &str = "eu-central";
const CALLER: (&str, &str) = ("us-west", "productpage-v1");
const REVIEWS_PORT: u16 = 9080;

/// The example configuration, embedded so the demo runs from any directory.
const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "us-east",
        &[
            (
                "mesh.yaml",
                include_str!("../../../deploy/examples/us-east/mesh.yaml"),
            ),
            (
                "workloads.yaml",
                include_str!("../../../deploy/examples/us-east/workloads.yaml"),
            ),
            (
                "traffic.yaml",
                include_str!("../../../deploy/examples/us-east/traffic.yaml"),
            ),
        ],
    ),
    (
        "us-west",
        &[
            (
                "mesh.yaml",
                include_str!("../../../deploy/examples/us-west/mesh.yaml"),
            ),
            (
                "workloads.yaml",
                include_str!("../../../deploy/examples/us-west/workloads.yaml"),
            ),
            (
                "traffic.yaml",
                include_str!("../../../deploy/examples/us-west/traffic.yaml"),
            ),
            (
                "ingress.yaml",
                include_str!("../../../deploy/examples/us-west/ingress.yaml"),
            ),
        ],
    ),
    (
        "eu-central",
        &[
            (
                "mesh.yaml",
                include_str!("../../../deploy/examples/eu-central/mesh.yaml"),
            ),
            (
                "workloads.yaml",
                include_str!("../../../deploy/examples/eu-central/workloads.yaml"),
            ),
            (
                "traffic.yaml",
                include_str!("../../../deploy/examples/eu-central/traffic.yaml"),
            ),
        ],
    ),
];

/// Second octets of the example clusters' loopback blocks (in the files).
const BLOCKS: [u8; 3] = [11, 12, 13];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Kill every us-east process, watch traffic move to eu-central, bring us-east back.
    Failover,
    /// Traffic only (on a terminal, Enter still kills and restarts us-east).
    None,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Root CA and intermediates (kept across runs), per-cluster config, data and logs.
    #[arg(long, default_value = "target/isthmus-demo")]
    pub state_dir: PathBuf,
    /// Use this directory's `<cluster>/*.yaml` instead of the built-in copy of deploy/examples.
    #[arg(long)]
    pub examples: Option<PathBuf>,
    /// Requests per second from productpage (us-west) to reviews.
    #[arg(long, default_value_t = 30.0)]
    pub rate: f64,
    /// What happens without a keypress. Defaults to `failover` when not on a terminal.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Stop after this long (plain output, summary, exit code); without it
    /// and on a terminal the demo runs until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Failover scenario: traffic settles this long before us-east dies...
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kill_after: Duration,
    /// ...and us-east stays down this long.
    #[arg(long, default_value = "12s", value_parser = parse_duration)]
    pub down_for: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    isthmus_control::config::Duration::parse(s).map(|d| d.as_std())
}

fn spec(args: &DemoArgs) -> FederationSpec {
    let mut spec = FederationSpec::bookinfo();
    for c in spec.clusters.iter_mut() {
        // The example files carry the DestinationRule and the real ports.
        c.extra_config.clear();
        for s in c.services.iter_mut() {
            s.protocol = "HTTP".into();
        }
        if c.name == CALLER.0 {
            // Users come in through us-west's ingress gateway to
            // productpage, which calls reviews on every request.
            c.ingress = true;
            for w in c.workloads.iter_mut().filter(|w| w.name == CALLER.1) {
                w.calls = Some(("reviews".into(), REVIEWS_PORT));
            }
        }
        c.config = match &args.examples {
            Some(dir) => ConfigSource::Directory(dir.join(&c.name)),
            None => ConfigSource::Files(
                EXAMPLES
                    .iter()
                    .find(|(n, _)| *n == c.name)
                    .map(|(_, files)| {
                        files
                            .iter()
                            .map(|(f, t)| (f.to_string(), t.to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        };
    }
    spec.blocks = Some(BLOCKS.to_vec());
    spec.state_dir = Some(args.state_dir.clone());
    spec.log_filter = "info".into();
    spec
}

/// Leaves the CA (so curl users keep trusting it) and drops what an
/// earlier run left: Raft logs, logs, config.
fn clean_state(args: &DemoArgs, spec: &FederationSpec) -> anyhow::Result<()> {
    for c in &spec.clusters {
        for sub in ["data", "logs", "config"] {
            let d = args.state_dir.join(&c.name).join(sub);
            if d.exists() {
                std::fs::remove_dir_all(&d)
                    .with_context(|| format!("cannot clear {}", d.display()))?;
            }
        }
    }
    for octet in BLOCKS {
        let b = Block { octet };
        if !isthmus_multicluster_tests::setup::block_free(b) {
            bail!(
                "{} or another port of 127.{octet}.0.0/16 is in use: is an earlier `isthmus demo` still running?",
                b.control_admin()
            );
        }
    }
    Ok(())
}

/// Which of us-east's states the demo is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Healthy,
    Down { at: Instant },
    Back { at: Instant },
}

struct Demo {
    fed: Federation,
    start: Instant,
    phase: Phase,
    all: Vec<Outcome>,
    events: Vec<Event>,
    kill_at: Option<Instant>,
    restart_at: Option<Instant>,
    lease_expired_after: Option<Duration>,
    failback_after: Option<Duration>,
}

impl Demo {
    fn event(&mut self, text: String) {
        self.events.push(Event {
            at: self.start.elapsed(),
            text,
        });
    }

    async fn kill_primary(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        self.fed.kill_cluster(PRIMARY).await?;
        self.phase = Phase::Down { at: now };
        self.kill_at.get_or_insert(now);
        self.event(format!("killed every {PRIMARY} process (kill -9)"));
        Ok(())
    }

    async fn restart_primary(&mut self) -> anyhow::Result<()> {
        self.fed.restart_cluster(PRIMARY).await?;
        let now = Instant::now();
        self.phase = Phase::Back { at: now };
        self.restart_at.get_or_insert(now);
        self.event(format!("restarted {PRIMARY}"));
        Ok(())
    }

    /// Notes lease expiry and failback once they happen.
    async fn observe(&mut self) {
        match self.phase {
            Phase::Down { at } if self.lease_expired_after.is_none() => {
                if let Ok(v) = self.fed.registry(CALLER.0).await {
                    if v.lease_expired(PRIMARY) == Some(true) {
                        let d = at.elapsed();
                        self.lease_expired_after = Some(d);
                        self.event(format!(
                            "{} marks {PRIMARY}'s lease expired ({:.1}s after the kill)",
                            CALLER.0,
                            d.as_secs_f64()
                        ));
                    }
                }
            }
            Phase::Back { at } if self.failback_after.is_none() => {
                let back = self
                    .all
                    .iter()
                    .filter(|o| o.start >= at)
                    .find(|o| matches!(&o.result, Ok(l) if l.cluster == PRIMARY));
                if let Some(o) = back {
                    let d = o.end.saturating_duration_since(at);
                    self.failback_after = Some(d);
                    self.event(format!(
                        "traffic is back in {PRIMARY} ({:.1}s after the restart)",
                        d.as_secs_f64()
                    ));
                }
            }
            _ => {}
        }
    }

    fn rows(window: &Summary) -> Vec<Row> {
        window
            .landings
            .iter()
            .map(|(Landing { cluster, version }, n)| Row {
                cluster: cluster.clone(),
                version: version.clone(),
                count: *n,
            })
            .collect()
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdout().is_terminal()
        && std::io::stdin().is_terminal()
        && args.duration.is_none();
    let scenario = args.scenario.unwrap_or(if interactive {
        Scenario::None
    } else {
        Scenario::Failover
    });
    let duration = args.duration.or(if interactive {
        None
    } else {
        Some(args.kill_after + args.down_for + Duration::from_secs(15))
    });
    let spec = spec(&args);
    clean_state(&args, &spec)?;
    let binary = std::env::current_exe().context("cannot find the isthmus executable")?;
    println!(
        "starting 3 clusters (us-east, us-west, eu-central) from deploy/examples; state in {}",
        args.state_dir.display()
    );
    let fed = Federation::start(spec, binary).await?;
    fed.wait_ready(READY_LIMIT).await?;
    fed.wait_lands(CALLER.0, CALLER.1, "reviews", PRIMARY, READY_LIMIT)
        .await?;
    let ingress = fed.cluster(CALLER.0)?.block.ingress();
    wait_ingress(&fed, ingress).await?;
    let url = format!("http://{ingress}/");
    println!(
        "ready. Try: curl {url}   (us-west's ingress gateway → productpage → reviews; the answer names the reviews that served it)"
    );
    println!("logs: {}/<cluster>/logs", args.state_dir.display());
    if interactive {
        println!(
            "press Enter to kill {PRIMARY}, Enter again to bring it back; Ctrl-C stops everything"
        );
    }

    let cfg = LoadConfig::new(ingress, "bookinfo.demo", args.rate);
    let mut load = Load::start(cfg);
    let mut demo = Demo {
        fed,
        start: Instant::now(),
        phase: Phase::Healthy,
        all: Vec::new(),
        events: Vec::new(),
        kill_at: None,
        restart_at: None,
        lease_expired_after: None,
        failback_after: None,
    };
    let (key_tx, mut keys) = tokio::sync::mpsc::channel::<()>(4);
    if interactive {
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                if key_tx.send(()).await.is_err() {
                    break;
                }
            }
        });
    }
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut stopped_by_user = false;
    let mut printed_events = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = keys.recv() => {
                match demo.phase {
                    Phase::Healthy | Phase::Back { .. } => demo.kill_primary().await?,
                    Phase::Down { .. } => demo.restart_primary().await?,
                }
                continue;
            }
            _ = &mut shutdown => { stopped_by_user = true; break; }
        }
        let elapsed = demo.start.elapsed();
        if scenario == Scenario::Failover {
            match demo.phase {
                Phase::Healthy if demo.kill_at.is_none() && elapsed >= args.kill_after => {
                    demo.kill_primary().await?
                }
                Phase::Down { at }
                    if demo.restart_at.is_none() && at.elapsed() >= args.down_for =>
                {
                    demo.restart_primary().await?
                }
                _ => {}
            }
        }
        let fresh = load.drain();
        let window = Summary::of(&fresh);
        demo.all.extend(fresh);
        demo.observe().await;
        let leases = match demo.fed.registry(CALLER.0).await {
            Ok(v) => v.leases,
            Err(_) => Vec::new(),
        };
        let total = Summary::of(&demo.all);
        let frame = view::Frame {
            elapsed,
            rows: Demo::rows(&window),
            window: &window,
            total: &total,
            leases: &leases,
            events: &demo.events,
            printed_events,
            url: &url,
        };
        printed_events = demo.events.len();
        if interactive {
            print!("\x1b[2J\x1b[H{}", view::table(&frame));
        } else {
            println!("{}", view::line(&frame));
        }
        let _ = std::io::stdout().flush();
        if duration.is_some_and(|d| elapsed >= d) {
            break;
        }
    }

    let rest = load.finish().await;
    demo.all.extend(rest);
    let verdict = verdict(&demo, scenario);
    println!("{}", verdict.text);
    demo.fed.shutdown().await;
    println!("stopped; nothing left running");
    Ok(if verdict.ok || stopped_by_user && duration.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Until a request through the ingress gateway comes back from reviews in
/// the primary (its routes and productpage's certificate are in place).
async fn wait_ingress(fed: &Federation, ingress: std::net::SocketAddr) -> anyhow::Result<()> {
    let cfg = LoadConfig::new(ingress, "bookinfo.demo", 1.0);
    isthmus_multicluster_tests::wait::until(
        "a request through the ingress gateway to reach reviews",
        READY_LIMIT,
        || async {
            match isthmus_multicluster_tests::load::request(&cfg).await {
                Ok(l) if l.cluster == PRIMARY => Ok(()),
                Ok(l) => Err(format!("landed in {}", l.cluster)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .map_err(|t| fed.not_ready(t))?;
    Ok(())
}

struct Verdict {
    ok: bool,
    text: String,
}

fn verdict(demo: &Demo, scenario: Scenario) -> Verdict {
    let total = Summary::of(&demo.all);
    let mut text = format!(
        "summary: {} requests, {} ok ({:.2}%), {} failed, p50 {:.1}ms, p99 {:.1}ms, max {:.1}ms\n",
        total.total,
        total.ok,
        total.success_rate() * 100.0,
        total.failed,
        ms(total.p50),
        ms(total.p99),
        ms(total.max)
    );
    for (l, n) in &total.landings {
        text.push_str(&format!("  {:<12} {:<4} {n}\n", l.cluster, l.version));
    }
    let served = total.ok > 0 && total.success_rate() >= 0.99;
    let mut ok = served;
    if !served {
        text.push_str("FAIL: traffic was not served (success rate below 99%)\n");
    }
    if let Some(at) = demo.kill_at {
        let r = around_fault(&demo.all, at, BACKUP);
        match r.time_to_shift {
            Some(d) => text.push_str(&format!(
                "failover: first request after the kill answered by {BACKUP} {:.0}ms after it; {} failed after the kill, {} lost in flight; peak latency {:.1}ms\n",
                ms(d),
                r.failed_after,
                r.failed_in_flight,
                ms(r.peak_latency)
            )),
            None => {
                ok = false;
                text.push_str(&format!("FAIL: no request reached {BACKUP} after {PRIMARY} died\n"));
            }
        }
        match demo.lease_expired_after {
            Some(d) => text.push_str(&format!(
                "lease: {PRIMARY} marked expired {:.1}s after the kill\n",
                d.as_secs_f64()
            )),
            None => text.push_str(&format!("lease: {PRIMARY}'s expiry was not observed\n")),
        }
        match (demo.restart_at, demo.failback_after) {
            (Some(_), Some(d)) => text.push_str(&format!(
                "failback: traffic back in {PRIMARY} {:.1}s after the restart\n",
                d.as_secs_f64()
            )),
            (Some(_), None) => {
                ok = false;
                text.push_str(&format!(
                    "FAIL: traffic did not come back to {PRIMARY} after its restart\n"
                ));
            }
            (None, _) => {}
        }
    } else if scenario == Scenario::Failover {
        ok = false;
        text.push_str("FAIL: the failover did not happen (the demo ended before the kill)\n");
    }
    Verdict { ok, text }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_examples_match_the_demo_spec() {
        // The harness starts workloads from the spec; the control planes
        // read the files. Both must put the same workload at the same place.
        let args = DemoArgs {
            state_dir: "x".into(),
            examples: None,
            rate: 1.0,
            scenario: None,
            duration: None,
            kill_after: Duration::from_secs(1),
            down_for: Duration::from_secs(1),
        };
        let spec = spec(&args);
        for (c, octet) in spec.clusters.iter().zip(BLOCKS) {
            let ConfigSource::Files(files) = &c.config else {
                panic!("not embedded")
            };
            let text: String = files.iter().map(|(_, t)| t.as_str()).collect();
            assert!(
                text.contains(&format!("clusterId: {}", c.name)),
                "{}",
                c.name
            );
            assert!(
                text.contains(&format!("network: {}", c.network)),
                "{}",
                c.name
            );
            assert!(text.contains(&format!("zone: {}", c.zone)), "{}", c.name);
            for (i, w) in c.workloads.iter().enumerate() {
                let addr = format!("address: 127.{octet}.1.{}", i + 1);
                let at = text
                    .find(&format!("name: {}\n", w.name))
                    .unwrap_or_else(|| panic!("{} missing", w.name));
                assert!(text[at..].contains(&addr), "{} should be at {addr}", w.name);
            }
            for s in &c.services {
                assert!(
                    text.contains(&format!("number: {}", s.port)),
                    "{} port {}",
                    s.name,
                    s.port
                );
            }
        }
    }
}
