//! kill -9 at random points, at least 20 times, loses no acknowledged write.
//! The child process is this test binary itself, re-run with only the
//! ignored `crash_child` test selected; it prints `ACK <n>` after each write
//! the federation acknowledged, and the parent SIGKILLs it at a random point.

mod common;

use isthmus_federation::fixtures::{cluster, key, service, upsert};
use isthmus_federation::testing::fast_config;
use isthmus_federation::transport::mem::MemNetwork;
use isthmus_federation::{Metrics, Node};
use rand::Rng;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DIR: &str = "ISTHMUS_FED_CRASH_DIR";
const CHILD_START: &str = "ISTHMUS_FED_CRASH_START";

/// Kills the child even when the test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_node(dir: &Path) -> Node {
    let net = MemNetwork::new();
    let (t, rx) = net.join(1);
    Node::start(
        fast_config(1, dir.to_path_buf(), vec![1]),
        t,
        rx,
        Metrics::unregistered().unwrap(),
    )
    .await
    .unwrap()
}

/// The child: a single-member federation writing as fast as it can.
#[test]
#[ignore = "run only as the child process of kill_9_loop_keeps_every_acknowledged_write"]
fn crash_child() {
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("child needs its data dir"));
    let start: u64 = std::env::var(CHILD_START).unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = start_node(&dir).await;
        let h = node.handle();
        h.register_cluster(cluster("a")).await.unwrap();
        let mut out = std::io::stdout();
        for n in start.. {
            h.publish("a", upsert(service("a", &format!("svc-{n}"), 1, n)))
                .await
                .unwrap();
            writeln!(out, "ACK {n}").unwrap();
            out.flush().unwrap();
        }
    });
}

#[test]
fn kill_9_loop_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut acked = BTreeSet::new();
    for round in 0..20u64 {
        let child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_START, (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let kill_after = rng.random_range(1..40);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        while seen < kill_after {
            assert!(
                Instant::now() < deadline,
                "child made no progress in round {round}"
            );
            let Some(line) = lines.next() else {
                panic!("child exited early in round {round}");
            };
            if let Some(n) = line.unwrap().split_once("ACK ").map(|(_, v)| v) {
                acked.insert(n.parse::<u64>().unwrap());
                seen += 1;
            }
        }
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        // Whatever the child printed before dying was acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.split_once("ACK ").map(|(_, v)| v) {
                acked.insert(n.parse::<u64>().unwrap());
            }
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let node = start_node(dir.path()).await;
        let view = node.handle().read_linearizable().await.unwrap();
        for n in &acked {
            assert!(
                view.services["a"].contains_key(&key("default", &format!("svc-{n}"))),
                "acknowledged write {n} lost after kill -9"
            );
        }
        node.stop().await;
    });
    assert!(acked.len() >= 20);
}
