//! Certificate rotation across clusters under load (issue 9): the sidecars
//! of both clusters get 4-second leaves, so each presents a new certificate
//! about every 2 s, while us-west's productpage calls us-east's reviews
//! (sidecar → east-west gateway → sidecar, mTLS end to end) at the scenario
//! rate for 20 s. Zero failed requests, every request served across the
//! cluster boundary, and each sidecar seen presenting many distinct leaves,
//! each verified by `openssl verify` against the federation's root.
//!
//! Needs the `openssl` command-line tool (installed by .ci/run).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use isthmus_multicluster_tests::rotation::{openssl_verifies, presented_chain};
use isthmus_multicluster_tests::{FederationSpec, Load, Summary};
use tokio::time::Instant;

const LEAF_LIFETIME: &str = "4s";
const RUN: Duration = Duration::from_secs(20);
const PROBE_EVERY: Duration = Duration::from_millis(400);
/// At ~2 s per rotation a 20 s run sees about 10 leaves per sidecar; fewer
/// than this means rotation stalled.
const MIN_LEAVES: usize = 5;

fn spec() -> FederationSpec {
    let mut spec = FederationSpec::two_networks();
    for c in &mut spec.clusters {
        c.sidecar_args = vec!["--cert-lifetime".to_string(), LEAF_LIFETIME.to_string()];
    }
    spec
}

/// A sidecar's inbound listener and the SNI a mesh client sends it.
struct Probe {
    name: &'static str,
    inbound: SocketAddr,
    sni: String,
    leaves: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_rotating_every_two_seconds_in_both_clusters_drop_no_request() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("skipped: the openssl command-line tool is not installed");
            return;
        }
        panic!("the openssl command-line tool is required (apt-get install openssl)");
    }
    let fed = common::start(spec(), "us-east").await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let root = fed.root().join("root").join("root-cert.pem");
    let mut probes: Vec<Probe> = [
        ("us-east", "reviews", 9080),
        ("us-west", "productpage", 9090),
    ]
    .into_iter()
    .map(|(name, service, port)| {
        let block = fed.cluster(name).unwrap().block;
        Probe {
            name,
            inbound: SocketAddr::new(block.workload_ip(1), port),
            sni: format!("outbound_.{port}_._.{service}.default.svc.cluster.local"),
            leaves: BTreeSet::new(),
        }
    })
    .collect();

    let load = Load::start(
        fed.load("us-west", "productpage-v1", "reviews", common::rate())
            .unwrap(),
    );
    let end = Instant::now() + RUN;
    while Instant::now() < end {
        for p in &mut probes {
            match presented_chain(p.inbound, &p.sni).await {
                Ok(chain) => {
                    if !p.leaves.contains(&chain[0]) {
                        assert!(
                            openssl_verifies(&root, &chain, scratch.path())
                                .await
                                .unwrap(),
                            "{}: a rotated leaf does not verify against the root",
                            p.name
                        );
                        p.leaves.insert(chain[0].clone());
                    }
                }
                Err(e) => panic!("{}: {e}\n{}", p.name, fed.log_tails(30)),
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let outcomes = load.finish().await;
    let summary = Summary::of(outcomes.iter());

    for p in &probes {
        assert!(
            p.leaves.len() >= MIN_LEAVES,
            "{}: only {} distinct leaves in {RUN:?} with {LEAF_LIFETIME} certificates\n{}",
            p.name,
            p.leaves.len(),
            fed.log_tails(30)
        );
    }
    // At least half the nominal rate, or the run proves little.
    let floor = (common::rate() * RUN.as_secs_f64() / 2.0) as usize;
    assert!(
        summary.ok >= floor,
        "too little traffic to prove anything: {summary:?}"
    );
    assert_eq!(
        summary.failed,
        0,
        "requests failed while certificates rotated: {:?}\n{}",
        summary.failures,
        fed.log_tails(30)
    );
    assert_eq!(
        summary.in_cluster("us-east"),
        summary.ok,
        "every call must cross to us-east: {summary:?}"
    );
    eprintln!(
        "leaf rotation: {} requests ok, p99 {:?}; leaves seen: {}",
        summary.ok,
        summary.p99,
        probes
            .iter()
            .map(|p| format!("{} {}", p.name, p.leaves.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    fed.shutdown().await;
}
