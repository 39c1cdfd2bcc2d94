//! The Isthmus side: three federation node processes (this binary re-run
//! with `BENCH_ROLE=isthmus-node`) over QUIC with mutual TLS on loopback,
//! fsync on. Each child takes commands on stdin and runs the load generator
//! in-process against its own node, which is how a control plane writes.

use crate::load::{self, LoadResult, Store};
use crate::pki;
use crate::procs::Proc;
use crate::Timing;
use isthmus_federation::model::{
    ClusterInfo, ClusterService, ExportedService, Locality, ServiceKey,
};
use isthmus_federation::transport::quic::{
    node_identity_authorizer, PeerAddr, QuicConfig, QuicTransport,
};
use isthmus_federation::{Handle, Metrics, Node, NodeConfig, PublishDiff, Role};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

pub const IDS: [u64; 3] = [1, 2, 3];
const CLUSTER: &str = "bench";

struct Registry(Handle);

impl Store for Registry {
    async fn put(&self, key: String, value: String) -> Result<(), String> {
        let svc = ClusterService {
            cluster: CLUSTER.into(),
            service: ExportedService {
                key: ServiceKey {
                    namespace: "bench".into(),
                    name: key,
                },
                ports: vec![],
                labels: BTreeMap::from([("v".to_string(), value)]),
            },
            endpoints: vec![],
        };
        let diff = PublishDiff {
            upserts: vec![svc],
            removals: vec![],
        };
        self.0
            .publish(CLUSTER, diff)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn cluster_info() -> ClusterInfo {
    ClusterInfo {
        id: CLUSTER.into(),
        network: "bench".into(),
        locality: Locality::default(),
        eastwest_tcp: vec![],
        eastwest_quic: vec![],
        ingress: vec![],
        intermediate_pem: String::new(),
        roots_pem: vec![],
    }
}

/// Child process body.
pub fn child(id: u64, dir: PathBuf, timing: Timing) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let (server, client) = pki::load(&dir, id)?;
        let authorize =
            node_identity_authorizer(pki::TD, |n| IDS.contains(&n).then(|| pki::spiffe(n)));
        let qcfg = QuicConfig::new(
            id,
            "127.0.0.1:0".parse().map_err(|_| "addr")?,
            server,
            client,
            authorize,
        );
        let metrics = Metrics::unregistered().map_err(|e| e.to_string())?;
        let (transport, inbound) =
            QuicTransport::start(qcfg, metrics.clone()).map_err(|e| e.to_string())?;
        println!(
            "PORT {}",
            transport.local_addr().map_err(|e| e.to_string())?.port()
        );
        // Commands arrive on stdin; EOF (the driver died) ends the process.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        let peers = rx.recv().await.ok_or("no peers line")?;
        for entry in peers.trim_start_matches("PEERS").split_whitespace() {
            let (pid, port) = entry.split_once('=').ok_or("bad peers line")?;
            let pid: u64 = pid.parse().map_err(|_| "bad peer id")?;
            let addr = PeerAddr::parse(&format!("127.0.0.1:{port}"), pki::SERVER_NAME)
                .map_err(|e| e.to_string())?;
            transport.add_peer(pid, addr);
        }
        let mut cfg = NodeConfig::new(id, dir.join(format!("data-{id}")), IDS.to_vec());
        cfg.tick_interval = timing.tick;
        cfg.heartbeat_ticks = timing.heartbeat_ticks;
        cfg.election_ticks = timing.election_ticks;
        // No lease renewer runs in the benchmark; keep expiry out of it.
        cfg.lease.ttl = Duration::from_secs(3600);
        // For experiments: how often the registry is snapshotted.
        if let Some(n) = std::env::var("BENCH_SNAPSHOT_EVERY")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.snapshot_every = n;
        }
        // For experiments: how often watchers get a new view of the registry.
        if let Some(ms) = std::env::var("BENCH_VIEW_PUBLISH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            cfg.view_publish_interval = Duration::from_millis(ms);
        }
        let node = Node::start(cfg, transport.clone(), inbound, metrics)
            .await
            .map_err(|e| e.to_string())?;
        let h = node.handle();
        println!("STARTED");
        while let Some(cmd) = rx.recv().await {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            match words.as_slice() {
                ["ROLE"] => {
                    let role = h.status().await.map(|s| s.role).ok();
                    println!(
                        "ROLE {}",
                        if role == Some(Role::Leader) {
                            "leader"
                        } else {
                            "other"
                        }
                    );
                }
                ["LOAD", writers, ms] => {
                    let writers: usize = writers.parse().map_err(|_| "bad writers")?;
                    let ms: u64 = ms.parse().map_err(|_| "bad duration")?;
                    let mut registered = false;
                    for _ in 0..100 {
                        if h.register_cluster(cluster_info()).await.is_ok() {
                            registered = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if !registered {
                        return Err("cannot register the bench cluster".into());
                    }
                    let r = load::run(
                        Arc::new(Registry(h.clone())),
                        writers,
                        Duration::from_millis(ms),
                    )
                    .await;
                    println!(
                        "RESULT {}",
                        serde_json::to_string(&r).map_err(|e| e.to_string())?
                    );
                }
                _ => break,
            }
        }
        node.stop().await;
        transport.close();
        Ok(())
    })
}

pub struct Cluster {
    pub procs: BTreeMap<u64, Proc>,
}

impl Cluster {
    pub fn start(dir: &Path) -> Result<Cluster, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        pki::write(dir, &IDS)?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut procs = BTreeMap::new();
        for id in IDS {
            let mut cmd = Command::new(&exe);
            cmd.env("BENCH_ROLE", "isthmus-node")
                .env("BENCH_ID", id.to_string())
                .env("BENCH_DIR", dir);
            procs.insert(id, Proc::spawn(&format!("isthmus-{id}"), cmd)?);
        }
        let mut ports = Vec::new();
        for (id, p) in &procs {
            ports.push(format!(
                "{id}={}",
                p.expect("PORT ", Duration::from_secs(20))?
            ));
        }
        let line = format!("PEERS {}", ports.join(" "));
        for p in procs.values_mut() {
            p.send(&line)?;
        }
        for p in procs.values() {
            p.expect("STARTED", Duration::from_secs(20))?;
        }
        Ok(Cluster { procs })
    }

    pub fn leader(&mut self, timeout: Duration) -> Result<u64, String> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            for (id, p) in self.procs.iter_mut() {
                p.send("ROLE")?;
                if p.expect("ROLE ", Duration::from_secs(5))? == "leader" {
                    return Ok(*id);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("no Isthmus leader elected".into())
    }

    /// Starts a load on node `id` without waiting for its result.
    pub fn start_load(&mut self, id: u64, writers: usize, dur: Duration) -> Result<(), String> {
        let p = self.procs.get_mut(&id).ok_or("no such node")?;
        p.send(&format!("LOAD {writers} {}", dur.as_millis()))
    }

    pub fn result(&self, id: u64, timeout: Duration) -> Result<LoadResult, String> {
        let p = self.procs.get(&id).ok_or("no such node")?;
        let json = p.expect("RESULT ", timeout)?;
        serde_json::from_str(&json).map_err(|e| e.to_string())
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.procs.remove(&id) {
            p.kill();
        }
    }
}
