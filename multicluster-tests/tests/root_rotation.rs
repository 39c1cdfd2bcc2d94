//! Root rotation across two clusters under steady cross-cluster traffic
//! (us-west productpage sidecar → us-east east-west gateway → reviews
//! sidecar, mTLS end to end), with the exact commands of docs/identity.md:
//!
//! (a) `isthmus ca bundle --add R2` in both clusters: every sidecar trusts
//!     R1+R2 (ROOTCA, and with it its CA and xDS connections);
//! (b) `isthmus ca intermediate --root-dir R2 --also-trust R1 --force` in
//!     us-west: its control plane reloads, its own serving certificate and
//!     its workloads' leaves move to the new intermediate;
//! (c) the same in us-east;
//! (d) `isthmus ca bundle --remove R1` in both: every proxy trusts R2 only.
//!
//! The east-west gateways run the QUIC tunnel (`transport: quic`), so the
//! cross-cluster leg crosses it through every step: the gateways follow
//! `ROOTCA` too (they subscribe although pure passthrough), and the tunnel
//! still carries new connections after R1 is retired.
//!
//! Zero failed requests overall; at the end every live leaf verifies with
//! `openssl verify` against R2 and fails against R1. Then a corrupt
//! ca-key.pem is refused and signing goes on with the last good intermediate.
//!
//! Needs the `openssl` command-line tool (installed by .ci/run).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isthmus_multicluster_tests::admin::{metrics, sum};
use isthmus_multicluster_tests::rotation::{
    add_root, init_root, openssl_verifies, presented_chain, reissue_intermediate, retire_root,
    rootca_count,
};
use isthmus_multicluster_tests::wait::until;
use isthmus_multicluster_tests::{Federation, FederationSpec, Load, Summary};

const STEP: Duration = Duration::from_secs(60);
/// Short leaves: sidecars renew every ~3 s (50% of the lifetime), so a new
/// intermediate reaches every workload within seconds without any signal.
const LEAF_LIFETIME: &str = "6s";
const RELOADS: &str = "isthmus_ca_reloads_total";
const CONTROL_SNI: &str = "isthmus-control";

fn spec() -> FederationSpec {
    let mut spec = FederationSpec::two_networks();
    for c in &mut spec.clusters {
        c.sidecar_args = vec!["--cert-lifetime".to_string(), LEAF_LIFETIME.to_string()];
        c.tunnel = true;
    }
    spec
}

struct Site {
    name: &'static str,
    ca_dir: PathBuf,
    control_admin: SocketAddr,
    grpc: SocketAddr,
    sidecar_admin: SocketAddr,
    eastwest_admin: SocketAddr,
    /// The sidecar's inbound listener (where it presents its leaf).
    inbound: SocketAddr,
    /// The SNI a mesh client sends to it.
    sni: String,
}

fn sites(fed: &Federation) -> Vec<Site> {
    [
        ("us-east", "reviews", 9080),
        ("us-west", "productpage", 9090),
    ]
    .into_iter()
    .map(|(name, service, port)| {
        let c = fed.cluster(name).unwrap();
        Site {
            name,
            ca_dir: c.dir.join("ca"),
            control_admin: c.block.control_admin(),
            grpc: c.block.grpc(),
            sidecar_admin: c.block.workload_admin(1),
            eastwest_admin: c.block.eastwest_admin(),
            inbound: SocketAddr::new(c.block.workload_ip(1), port),
            sni: format!("outbound_.{port}_._.{service}.default.svc.cluster.local"),
        }
    })
    .collect()
}

async fn reloads(site: &Site, outcome: &str) -> f64 {
    match metrics(site.control_admin).await {
        Ok(m) => sum(&m, RELOADS, &[("outcome", outcome)]),
        Err(_) => -1.0,
    }
}

async fn wait_reload(site: &Site, outcome: &str, before: f64, fed: &Federation) {
    until(
        &format!(
            "{} control plane to count a CA reload `{outcome}`",
            site.name
        ),
        STEP,
        || async {
            let now = reloads(site, outcome).await;
            if now > before {
                Ok(())
            } else {
                Err(format!("{RELOADS}{{outcome=\"{outcome}\"}} is {now}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fed.log_tails(30)));
}

/// Waits until the sidecar and the east-west gateway (pure passthrough, but
/// subscribed to `ROOTCA` for its own control-plane trust) hold `roots`.
async fn wait_rootca(site: &Site, roots: usize, fed: &Federation) {
    for (proxy, admin) in [
        ("sidecar", site.sidecar_admin),
        ("east-west gateway", site.eastwest_admin),
    ] {
        until(
            &format!("{} {proxy} to trust {roots} root(s)", site.name),
            STEP,
            || async {
                match rootca_count(admin).await {
                    Ok(n) if n == roots => Ok(()),
                    Ok(n) => Err(format!("ROOTCA has {n} root(s)")),
                    Err(e) => Err(e),
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fed.log_tails(30)));
    }
}

/// Connections us-west's east-west gateway sent through the QUIC tunnel.
async fn tunnel_connections(site: &Site) -> f64 {
    sum(
        &metrics(site.eastwest_admin).await.unwrap_or_default(),
        "isthmus_gateway_tunnel_connections_total",
        &[("transport", "quic")],
    )
}

/// Waits until `addr` presents a leaf other than `old` (a renewal after
/// the last change) that verifies against `ca_file`; returns its chain.
async fn wait_leaf(
    what: &str,
    (addr, sni): (SocketAddr, &str),
    old: Option<&str>,
    ca_file: &Path,
    scratch: &Path,
    fed: &Federation,
) -> Vec<String> {
    until(what, STEP, || async {
        let chain = presented_chain(addr, sni).await?;
        if Some(chain[0].as_str()) == old {
            return Err("still the previous leaf".to_string());
        }
        if openssl_verifies(ca_file, &chain, scratch).await? {
            Ok(chain)
        } else {
            Err(format!(
                "the leaf does not verify against {}",
                ca_file.display()
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", fed.log_tails(30)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_across_two_clusters_drops_no_request() {
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
    let bin = fed.binary().to_path_buf();
    let scratch = tempfile::tempdir().unwrap();
    let r1_cert = fed.root().join("root").join("root-cert.pem");
    let r2_dir = scratch.path().join("r2");
    let r2_cert = init_root(&bin, &r2_dir, "Isthmus Root CA 2").await.unwrap();
    let sites = sites(&fed);

    let mut load = Load::start(
        fed.load("us-west", "productpage-v1", "reviews", common::rate())
            .unwrap(),
    );
    let mut outcomes = Vec::new();

    // Every leaf chains to R1 before anything changes.
    let mut leaves = Vec::new();
    for s in &sites {
        let chain = wait_leaf(
            &format!("{} leaf under R1", s.name),
            (s.inbound, &s.sni),
            None,
            &r1_cert,
            scratch.path(),
            &fed,
        )
        .await;
        assert!(!openssl_verifies(&r2_cert, &chain, scratch.path())
            .await
            .unwrap());
        leaves.push(chain[0].clone());
    }

    // (a) Trust R2 everywhere.
    for s in &sites {
        let before = reloads(s, "applied").await;
        add_root(&bin, &s.ca_dir, &r2_cert).await.unwrap();
        wait_reload(s, "applied", before, &fed).await;
    }
    // Once ROOTCA carries R2, a proxy trusts R2 for its control plane too:
    // no waiting for renewals before the control plane's certificate moves
    // (waiting for them hid a race that locked sidecars out of their CA).
    for s in &sites {
        wait_rootca(s, 2, &fed).await;
    }
    outcomes.extend(load.drain());

    // (b), (c) Re-issue each cluster's intermediate under R2, one at a time.
    for (s, leaf) in sites.iter().rev().zip(leaves.iter_mut().rev()) {
        let before = reloads(s, "applied").await;
        reissue_intermediate(
            &bin,
            s.name,
            "demo.isthmus.local",
            &s.ca_dir,
            &r2_dir,
            &r1_cert,
        )
        .await
        .unwrap();
        wait_reload(s, "applied", before, &fed).await;
        // The control plane's own serving certificate (xDS/CA port) moved first...
        wait_leaf(
            &format!("{} control plane certificate under R2", s.name),
            (s.grpc, CONTROL_SNI),
            None,
            &r2_cert,
            scratch.path(),
            &fed,
        )
        .await;
        // ...then the workload's leaf, at its next renewal.
        *leaf = wait_leaf(
            &format!("{} workload leaf under R2", s.name),
            (s.inbound, &s.sni),
            Some(leaf),
            &r2_cert,
            scratch.path(),
            &fed,
        )
        .await[0]
            .clone();
        outcomes.extend(load.drain());
    }

    // (d) Retire R1 everywhere.
    for s in &sites {
        let before = reloads(s, "applied").await;
        retire_root(&bin, &s.ca_dir, &r1_cert).await.unwrap();
        wait_reload(s, "applied", before, &fed).await;
    }
    let mut finals = Vec::new();
    let quic_after_retire = tunnel_connections(&sites[1]).await;
    for (s, leaf) in sites.iter().zip(leaves.iter()) {
        wait_rootca(s, 1, &fed).await;
        finals.push(
            wait_leaf(
                &format!("{} leaf renewed after retiring R1", s.name),
                (s.inbound, &s.sni),
                Some(leaf),
                &r2_cert,
                scratch.path(),
                &fed,
            )
            .await,
        );
    }
    for (s, chain) in sites.iter().zip(&finals) {
        assert!(
            openssl_verifies(&r2_cert, chain, scratch.path())
                .await
                .unwrap(),
            "{}: live leaf must verify against R2",
            s.name
        );
        assert!(
            !openssl_verifies(&r1_cert, chain, scratch.path())
                .await
                .unwrap(),
            "{}: live leaf must not verify against the retired R1",
            s.name
        );
        let control = presented_chain(s.grpc, CONTROL_SNI).await.unwrap();
        assert!(!openssl_verifies(&r1_cert, &control, scratch.path())
            .await
            .unwrap());
    }

    // A corrupt key dropped into the directory is refused; the last good
    // intermediate keeps signing (the sidecar keeps renewing under R2).
    let west = &sites[1];
    let before = reloads(west, "refused").await;
    std::fs::write(
        west.ca_dir.join("ca-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    wait_reload(west, "refused", before, &fed).await;
    let after_corrupt = presented_chain(west.inbound, &west.sni).await.unwrap();
    wait_leaf(
        "us-west leaf renewed by the last good intermediate after a corrupt ca-key.pem",
        (west.inbound, &west.sni),
        Some(&after_corrupt[0]),
        &r2_cert,
        scratch.path(),
        &fed,
    )
    .await;

    let ok_before_end = Summary::of(outcomes.iter()).ok;
    outcomes.extend(load.finish().await);
    let quic_end = tunnel_connections(&sites[1]).await;
    assert!(
        quic_end > quic_after_retire,
        "the QUIC tunnel must still carry us-west's connections after R1 was retired ({quic_after_retire} -> {quic_end})\n{}",
        fed.log_tails(30)
    );
    let summary = Summary::of(outcomes.iter());
    assert!(
        summary.ok > ok_before_end && summary.ok >= 100,
        "too little traffic to prove anything: {summary:?}"
    );
    assert_eq!(
        summary.failed,
        0,
        "requests failed during the rotation: {:?}\n{}",
        summary.failures,
        fed.log_tails(30)
    );
    fed.shutdown().await;
}
