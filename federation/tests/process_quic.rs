//! Three federation nodes as real processes talking QUIC with mutual TLS on
//! loopback. The leader is killed with SIGKILL under write load: a new leader
//! takes over and no acknowledged write is lost. Children are this test
//! binary re-run with only the ignored `quic_child` test selected. libtest
//! prints `test quic_child ... ` before the child's first line, so tags are
//! found anywhere in a line.

mod common;

use common::pki::{tls_from_files, Ca};
use isthmus_federation::fixtures::{cluster, key, service, upsert};
use isthmus_federation::testing::{fast_config, TestCluster};
use isthmus_federation::transport::quic::{trust_domain_authorizer, QuicConfig, QuicTransport};
use isthmus_federation::{Metrics, Node, Role, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TD: &str = "federation.test";
const ENV_ID: &str = "ISTHMUS_FED_CHILD_ID";
const ENV_BASE: &str = "ISTHMUS_FED_CHILD_BASE";

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node process: QUIC on an ephemeral loopback port (printed as `PORT p`),
/// peers read from `<base>/peers` once the parent wrote it, then writes in a
/// loop printing `ACK n` for each acknowledged one and `ROLE r` on changes.
#[test]
#[ignore = "run only as a child process of leader_process_killed_over_quic"]
fn quic_child() {
    let id: u64 = std::env::var(ENV_ID).expect("child id").parse().unwrap();
    let base = PathBuf::from(std::env::var(ENV_BASE).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let (server, client) = tls_from_files(&base, id);
        let cfg = QuicConfig::new(
            id,
            "127.0.0.1:0".parse().unwrap(),
            server,
            client,
            trust_domain_authorizer(TD),
        );
        let (transport, inbound) =
            QuicTransport::start(cfg, Metrics::unregistered().unwrap()).unwrap();
        let mut out = std::io::stdout();
        writeln!(out, "PORT {}", transport.local_addr().unwrap().port()).unwrap();
        out.flush().unwrap();
        common::add_peers_from_file(&base, id, &transport).await;
        let t: Arc<dyn Transport> = transport.clone();
        let node = Node::start(
            fast_config(id, base.join(format!("data-{id}")), vec![1, 2, 3]),
            t,
            inbound,
            Metrics::unregistered().unwrap(),
        )
        .await
        .unwrap();
        let h = node.handle();
        let name = format!("c{id}");
        let mut role = None;
        let mut registered = false;
        let mut n = id * 1_000_000;
        loop {
            let r = h.status().await.unwrap().role;
            if role != Some(r) {
                role = Some(r);
                writeln!(out, "ROLE {r:?}").unwrap();
                out.flush().unwrap();
            }
            if !registered {
                registered = h.register_cluster(cluster(&name)).await.is_ok();
                continue;
            }
            n += 1;
            if h.publish(&name, upsert(service(&name, &format!("svc-{n}"), 1, n)))
                .await
                .is_ok()
            {
                writeln!(out, "ACK {n}").unwrap();
                out.flush().unwrap();
            }
        }
    });
}

#[test]
fn leader_process_killed_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let ca = Ca::new();
    for id in 1..=3 {
        ca.write_node_files(base, TD, id);
    }
    let exe = std::env::current_exe().unwrap();
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    let mut children = BTreeMap::new();
    for id in 1..=3u64 {
        let mut child = KillOnDrop(
            Command::new(&exe)
                .args([
                    "quic_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ENV_ID, id.to_string())
                .env(ENV_BASE, base)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((id, line)).is_err() {
                    return;
                }
            }
        });
        children.insert(id, child);
    }
    let mut ports = BTreeMap::new();
    let mut roles: BTreeMap<u64, String> = BTreeMap::new();
    let mut acked: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let next = |deadline: Instant| -> Option<(u64, String)> {
        let left = deadline.checked_duration_since(Instant::now())?;
        rx.recv_timeout(left).ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ports.len() < 3 {
        let (id, line) = next(deadline).expect("every child reports its port");
        if let Some(p) = line.split_once("PORT ").map(|(_, v)| v) {
            ports.insert(id, p.to_string());
        }
    }
    let peers: String = ports.iter().map(|(id, p)| format!("{id} {p}\n")).collect();
    std::fs::write(base.join("peers.tmp"), peers).unwrap();
    std::fs::rename(base.join("peers.tmp"), base.join("peers")).unwrap();

    // Wait for a leader and writes from every node.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let (id, line) = next(deadline).expect("a leader and writes over QUIC");
        record(id, &line, &mut roles, &mut acked);
        let leader = roles
            .iter()
            .find(|(_, r)| r.as_str() == "Leader")
            .map(|(id, _)| *id);
        if let Some(l) = leader {
            if (1..=3).all(|i| acked.get(&i).is_some_and(|s| s.len() >= 5)) {
                break l;
            }
        }
    };
    let before: usize = acked.values().map(|s| s.len()).sum();
    children.remove(&leader); // SIGKILL via Drop
    roles.remove(&leader);
    // A survivor becomes leader and the survivors keep writing.
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (id, line) = next(deadline).expect("a new leader among the surviving processes");
        if id == leader {
            continue;
        }
        record(id, &line, &mut roles, &mut acked);
        let new_leader = survivors
            .iter()
            .any(|s| roles.get(s).map(String::as_str) == Some("Leader"));
        let total: usize = acked.values().map(|s| s.len()).sum();
        if new_leader && total >= before + 10 {
            break;
        }
    }
    drop(children); // SIGKILL the rest
                    // Drain what they printed before dying: acknowledged too.
    while let Ok((id, line)) = rx.recv_timeout(Duration::from_millis(200)) {
        record(id, &line, &mut roles, &mut acked);
    }

    let total: usize = acked.values().map(|s| s.len()).sum();
    assert!(total >= 25, "too few acknowledged writes to judge: {total}");
    // Reopen the three data directories in-process and check every ACK.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        std::fs::create_dir_all(base.join("verify")).unwrap();
        let mut tc = TestCluster::start(&base.join("verify"), &[], |_| {})
            .await
            .unwrap();
        for id in 1..=3u64 {
            let from = base.join(format!("data-{id}"));
            let to = tc.data_dir(id);
            std::fs::rename(&from, &to).unwrap();
            tc.start_joiner(id, |_| {}).await.unwrap();
        }
        let l = tc
            .wait_leader(&[1, 2, 3], Duration::from_secs(10))
            .await
            .expect("leader after restart");
        let view = tc.handle(l).unwrap().read_linearizable().await.unwrap();
        assert_eq!(
            tc.handle(l).unwrap().status().await.unwrap().role,
            Role::Leader
        );
        for (id, ns) in &acked {
            let services = &view.services[&format!("c{id}")];
            for n in ns {
                assert!(
                    services.contains_key(&key("default", &format!("svc-{n}"))),
                    "acknowledged write {n} of node {id} lost"
                );
            }
        }
    });
}

fn record(
    id: u64,
    line: &str,
    roles: &mut BTreeMap<u64, String>,
    acked: &mut BTreeMap<u64, BTreeSet<u64>>,
) {
    if let Some(r) = line.split_once("ROLE ").map(|(_, v)| v) {
        roles.insert(id, r.to_string());
    } else if let Some(n) = line.split_once("ACK ").map(|(_, v)| v) {
        acked.entry(id).or_default().insert(n.parse().unwrap());
    }
}
