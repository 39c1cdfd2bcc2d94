#![allow(dead_code)]

pub mod pki;

use isthmus_federation::fixtures::{cluster, service, upsert};
use isthmus_federation::{FederationError, Handle};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(10);

/// Registers cluster `c` through `h`, retrying while no leader is elected.
pub async fn register(h: &Handle, c: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match h.register_cluster(cluster(c)).await {
            Ok(_) => return,
            Err(e @ (FederationError::NoLeader { .. } | FederationError::NoQuorum { .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                eprintln!("retrying registration: {e}");
            }
            Err(e) => panic!("register {c}: {e}"),
        }
    }
}

/// Publishes service `svc-{i}` of cluster `c` (one endpoint tagged `i`).
pub async fn publish_one(h: &Handle, c: &str, i: u64) -> Result<u64, FederationError> {
    h.publish(c, upsert(service(c, &format!("svc-{i}"), 1, i)))
        .await
}

/// Logs to the test output when RUST_LOG is set (e.g. `RUST_LOG=raft=debug`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A process test's child: waits for the parent's `peers` file in `base`
/// (one `ID PORT` line per node, written once every child printed its
/// port) and adds every other node to `transport`.
pub async fn add_peers_from_file(
    base: &std::path::Path,
    id: u64,
    transport: &isthmus_federation::transport::quic::QuicTransport,
) {
    let peers_file = base.join("peers");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !peers_file.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no peers file");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for line in std::fs::read_to_string(&peers_file).unwrap().lines() {
        let (pid, port) = line.split_once(' ').unwrap();
        let pid: u64 = pid.parse().unwrap();
        if pid != id {
            transport.add_peer(
                pid,
                isthmus_federation::transport::quic::PeerAddr::parse(
                    &format!("127.0.0.1:{port}"),
                    pki::SERVER_NAME,
                )
                .unwrap(),
            );
        }
    }
}
