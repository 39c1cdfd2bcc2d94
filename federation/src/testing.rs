//! In-process federation clusters over the fault-injecting memory network,
//! for this crate's tests and the multi-cluster harness (`testing` feature).

use crate::config::NodeConfig;
use crate::handle::{Handle, Role};
use crate::metrics::Metrics;
use crate::node::{Node, StartError};
use crate::transport::mem::MemNetwork;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Timing for tests: 20 ms ticks, election after 200–400 ms.
pub fn fast_config(id: u64, dir: PathBuf, voters: Vec<u64>) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, dir, voters);
    cfg.tick_interval = Duration::from_millis(20);
    cfg.election_ticks = 10;
    cfg.heartbeat_ticks = 2;
    cfg.request_timeout = Duration::from_secs(3);
    cfg.lease.renew_interval = Duration::from_millis(100);
    cfg.lease.ttl = Duration::from_millis(400);
    cfg.lease.grace = Duration::from_millis(200);
    cfg
}

pub struct TestCluster {
    pub net: MemNetwork,
    base: PathBuf,
    configs: BTreeMap<u64, NodeConfig>,
    nodes: BTreeMap<u64, Node>,
}

impl TestCluster {
    /// Starts voters `ids` with data under `base/node-<id>`; `tune` adjusts
    /// each node's configuration.
    pub async fn start(
        base: &Path,
        ids: &[u64],
        tune: impl Fn(&mut NodeConfig),
    ) -> Result<TestCluster, StartError> {
        let mut cluster = TestCluster {
            net: MemNetwork::new(),
            base: base.to_path_buf(),
            configs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in ids {
            let mut cfg = fast_config(*id, base.join(format!("node-{id}")), ids.to_vec());
            tune(&mut cfg);
            cluster.configs.insert(*id, cfg);
        }
        for id in ids {
            cluster.restart(*id).await?;
        }
        Ok(cluster)
    }

    /// Starts a node that is not a member yet (then add it with
    /// `Handle::add_voter`/`add_learner` on the leader).
    pub async fn start_joiner(
        &mut self,
        id: u64,
        tune: impl Fn(&mut NodeConfig),
    ) -> Result<(), StartError> {
        let mut cfg = fast_config(id, self.data_dir(id), vec![]);
        tune(&mut cfg);
        self.configs.insert(id, cfg);
        self.restart(id).await
    }

    /// (Re)starts node `id` from its data directory.
    pub async fn restart(&mut self, id: u64) -> Result<(), StartError> {
        let cfg = self
            .configs
            .get(&id)
            .cloned()
            .ok_or_else(|| StartError::Config(format!("unknown test node {id}")))?;
        let (transport, inbound) = self.net.join(id);
        let metrics = Metrics::unregistered().map_err(|e| StartError::Config(e.to_string()))?;
        let node = Node::start(cfg, transport, inbound, metrics).await?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Stops node `id` abruptly from the network's point of view and waits
    /// until its storage is closed.
    pub async fn kill(&mut self, id: u64) {
        self.net.leave(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.stop().await;
        }
    }

    /// Where node `id` keeps (or will keep) its data.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.base.join(format!("node-{id}"))
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn handle(&self, id: u64) -> Option<Handle> {
        self.nodes.get(&id).map(|n| n.handle())
    }

    pub fn handles(&self) -> Vec<Handle> {
        self.nodes.values().map(|n| n.handle()).collect()
    }

    /// Waits until a majority of `among` (running nodes) agree on one leader
    /// that considers itself leader.
    pub async fn wait_leader(&self, among: &[u64], timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            let mut leaders = Vec::new();
            for id in among {
                if let Some(h) = self.handle(*id) {
                    if let Ok(s) = h.status().await {
                        if s.leader != 0 {
                            *votes.entry(s.leader).or_default() += 1;
                        }
                        if s.role == Role::Leader {
                            leaders.push(s.id);
                        }
                    }
                }
            }
            for l in leaders {
                if votes.get(&l).copied().unwrap_or(0) > among.len() / 2 {
                    return Some(l);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Waits until every node in `ids` applied at least `revision`.
    pub async fn wait_revision(&self, ids: &[u64], revision: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for id in ids {
            let Some(h) = self.handle(*id) else {
                return false;
            };
            let mut view = h.watch_snapshot();
            let ok =
                tokio::time::timeout_at(deadline, view.wait_for(|v| v.revision >= revision)).await;
            if !matches!(ok, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }
}
