//! Issue 8: the cost of AuthorizationPolicy rules and JWT validation on a
//! sidecar's inbound path, relative to no policy, in one run.
//!
//! Four httpbin sidecars run side by side in this process (no policy, 10
//! and 100 ALLOW rules, RequestAuthentication RS256 + a requestPrincipals
//! rule), each translated from Istio YAML by the control plane's code and
//! configured over a real ADS stream. The same in-process load generator
//! (keep-alive HTTP/1.1 over mTLS, one client identity, the same request
//! with the same bearer token everywhere) drives each in turn; rounds
//! rotate the order so drift on a shared machine hits every configuration.
//!
//! `gateway/bench/policy.sh` runs it and writes docs/benchmarks.md; by hand:
//! `cargo run -p isthmus-gateway --example policy_bench -- [--connections N]
//! [--warmup-secs S] [--secs S] [--rounds R] [--out FILE]`.

#[path = "../../tests/support/mod.rs"]
mod support;
#[path = "../../tests/translate_support/mod.rs"]
mod translate_support;

mod load;
mod setup;

use std::fmt::Write as _;
use std::time::Duration;

use load::{RequestShape, Sample};
use setup::{Issuer, Pki, Scenario, Sidecar, PATH};
use support::http::HttpBackend;

struct Options {
    connections: usize,
    warmup: Duration,
    measure: Duration,
    rounds: usize,
    out: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        connections: 16,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(5),
        rounds: 3,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|e| format!("{flag} {v:?}: {e}"))
                .and_then(|n| (n > 0).then_some(n).ok_or(format!("{flag} must be > 0")))
        };
        match flag.as_str() {
            "--connections" => o.connections = num(value()?)? as usize,
            "--warmup-secs" => o.warmup = Duration::from_secs(num(value()?)?),
            "--secs" => o.measure = Duration::from_secs(num(value()?)?),
            "--rounds" => o.rounds = num(value()?)? as usize,
            "--out" => o.out = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --connections N --warmup-secs S \
                     --secs S --rounds R --out FILE"
                ))
            }
        }
    }
    Ok(o)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    support::init();
    let o = options()?;
    let pki = Pki::new()?;
    let tls = pki.client_tls()?;
    let issuer = Issuer::new()?;
    let app = HttpBackend::start("httpbin").await;

    let scenarios = vec![
        Scenario::baseline(),
        Scenario::rules(10),
        Scenario::rules(100),
        Scenario::jwt(&issuer),
    ];
    let mut sidecars = Vec::new();
    for s in &scenarios {
        sidecars.push(Sidecar::start(&pki, s, app.addr).await?);
    }
    let shape = RequestShape {
        path: PATH,
        token: Some(issuer.token.clone()),
    };

    // Every sidecar must forward the measured request and enforce its
    // policy; a benchmark of a proxy that denies (or allows) everything
    // would measure nothing.
    for (s, car) in scenarios.iter().zip(&sidecars) {
        let mut send = load::connect(&tls, car.inbound).await?;
        let ok = load::request(&mut send, &shape).await?;
        if ok != 200 {
            return Err(format!("[{}] measured request got {ok}, want 200", s.name));
        }
        let (path, with_token) = s.denied;
        if !path.is_empty() {
            let probe = RequestShape {
                path,
                token: with_token.then(|| issuer.token.clone()),
            };
            let got = load::request(&mut send, &probe).await?;
            if got != 403 {
                return Err(format!("[{}] {path} got {got}, want 403", s.name));
            }
        }
    }
    eprintln!(
        "checked: every sidecar forwards the measured request and denies its probe; \
         {} rounds x {} configurations x ({:?} warm-up + {:?})",
        o.rounds,
        scenarios.len(),
        o.warmup,
        o.measure
    );

    // samples[config][round]
    let mut samples: Vec<Vec<Sample>> = scenarios.iter().map(|_| Vec::new()).collect();
    for round in 0..o.rounds {
        for k in 0..scenarios.len() {
            let i = (round + k) % scenarios.len();
            let s = load::run(
                &tls,
                sidecars[i].inbound,
                &shape,
                o.connections,
                o.warmup,
                o.measure,
            )
            .await?;
            eprintln!(
                "round {} {:<36} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                round + 1,
                scenarios[i].name,
                s.rps(),
                s.percentile_ms(0.50),
                s.percentile_ms(0.99),
                s.errors
            );
            samples[i].push(s);
        }
    }

    let table = render(&scenarios, &samples, &o);
    println!("{table}");
    if let Some(path) = &o.out {
        std::fs::write(path, &table).map_err(|e| format!("writing {path}: {e}"))?;
    }
    for car in sidecars {
        car.gw.shutdown().await;
    }
    drop(app);
    Ok(())
}

/// The Markdown table: medians over rounds; the cost is the median of the
/// per-round throughput drop against that round's baseline.
fn render(scenarios: &[Scenario], samples: &[Vec<Sample>], o: &Options) -> String {
    let base = &samples[0];
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| configuration | req/s | p50 (ms) | p99 (ms) | throughput cost vs no policy | p99 vs no policy | errors | req/s per round |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|");
    let base_p99 = median(base.iter().map(|s| s.percentile_ms(0.99)).collect());
    for (s, runs) in scenarios.iter().zip(samples) {
        let rps = median(runs.iter().map(Sample::rps).collect());
        let p50 = median(runs.iter().map(|r| r.percentile_ms(0.50)).collect());
        let p99 = median(runs.iter().map(|r| r.percentile_ms(0.99)).collect());
        let cost = median(
            runs.iter()
                .zip(base)
                .map(|(r, b)| (1.0 - r.rps() / b.rps()) * 100.0)
                .collect(),
        );
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        let per_round = runs
            .iter()
            .map(|r| format!("{:.0}", r.rps()))
            .collect::<Vec<_>>()
            .join(" / ");
        let (cost, p99_delta) = if std::ptr::eq(runs, base) {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("{cost:+.1} %"),
                format!("{:+.1} %", (p99 / base_p99 - 1.0) * 100.0),
            )
        };
        let _ = writeln!(
            t,
            "| {} | {rps:.0} | {p50:.2} | {p99:.2} | {cost} | {p99_delta} | {errors} | {per_round} |",
            s.name
        );
    }
    let _ = writeln!(
        t,
        "\n{} rounds; per round and configuration {} keep-alive HTTP/1.1 connections over mTLS, \
         {} s warm-up, {} s measured; the order of configurations rotates each round.",
        o.rounds,
        o.connections,
        o.warmup.as_secs(),
        o.measure.as_secs()
    );
    t
}
