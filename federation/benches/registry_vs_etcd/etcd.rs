//! The etcd side: three `etcd` processes from Debian's etcd-server package
//! on loopback (fsync on, as shipped), driven through etcd's own gRPC KV API
//! (`etcdserverpb.KV/Put`) by the same load generator.

use crate::load::Store;
use crate::procs::{free_port, Proc};
use crate::Timing;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::Channel;

/// `etcdserverpb.PutRequest` (etcd's rpc.proto field numbers).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub lease: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// Writers share a few HTTP/2 connections round-robin, like etcd's own
/// benchmark tool (`--conns`).
pub struct Etcd {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Etcd {
    pub async fn connect(endpoint: &str, conns: usize) -> Result<Etcd, String> {
        let mut channels = Vec::new();
        for _ in 0..conns.max(1) {
            let ch = Channel::from_shared(endpoint.to_string())
                .map_err(|e| e.to_string())?
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| format!("cannot connect to etcd at {endpoint}: {e}"))?;
            channels.push(ch);
        }
        Ok(Etcd {
            channels,
            next: AtomicUsize::new(0),
        })
    }
}

impl Store for Etcd {
    async fn put(&self, key: String, value: String) -> Result<(), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        let mut grpc = tonic::client::Grpc::new(self.channels[i].clone());
        grpc.ready().await.map_err(|e| e.to_string())?;
        let codec: tonic_prost::ProstCodec<PutRequest, PutResponse> = Default::default();
        let req = PutRequest {
            key: key.into_bytes(),
            value: value.into_bytes(),
            lease: 0,
        };
        grpc.unary(
            tonic::Request::new(req),
            http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put"),
            codec,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

pub struct Cluster {
    pub procs: BTreeMap<u64, Proc>,
    pub clients: BTreeMap<u64, String>,
}

impl Cluster {
    pub fn start(dir: &Path, timing: Timing) -> Result<Cluster, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut peers = BTreeMap::new();
        let mut clients = BTreeMap::new();
        for id in 1..=3u64 {
            peers.insert(id, format!("http://127.0.0.1:{}", free_port()?));
            clients.insert(id, format!("http://127.0.0.1:{}", free_port()?));
        }
        let initial: Vec<String> = peers.iter().map(|(id, u)| format!("e{id}={u}")).collect();
        let heartbeat = (timing.tick * timing.heartbeat_ticks as u32).as_millis();
        let election = (timing.tick * timing.election_ticks as u32).as_millis();
        let mut procs = BTreeMap::new();
        for id in 1..=3u64 {
            let mut cmd = Command::new("etcd");
            cmd.args([
                "--name",
                &format!("e{id}"),
                "--data-dir",
                &dir.join(format!("etcd-{id}")).to_string_lossy(),
                "--listen-client-urls",
                &clients[&id],
                "--advertise-client-urls",
                &clients[&id],
                "--listen-peer-urls",
                &peers[&id],
                "--initial-advertise-peer-urls",
                &peers[&id],
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "isthmus-bench",
                "--heartbeat-interval",
                &heartbeat.to_string(),
                "--election-timeout",
                &election.to_string(),
                "--pre-vote",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ]);
            procs.insert(id, Proc::spawn(&format!("etcd-{id}"), cmd)?);
        }
        Ok(Cluster { procs, clients })
    }

    fn endpoints(&self) -> String {
        self.procs
            .keys()
            .map(|id| self.clients[id].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member id that leads, per `etcdctl endpoint status`.
    pub fn leader(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoints(),
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .output()
                .map_err(|e| format!("cannot run etcdctl: {e}"))?;
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                for (id, url) in &self.clients {
                    for st in v.as_array().into_iter().flatten() {
                        let ep = st["Endpoint"].as_str().unwrap_or_default();
                        let member = st["Status"]["header"]["member_id"].as_u64();
                        let leader = st["Status"]["leader"].as_u64();
                        if ep == url && member.is_some() && member == leader {
                            return Ok(*id);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("no etcd leader: {last}"))
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.procs.remove(&id) {
            p.kill();
        }
    }
}
