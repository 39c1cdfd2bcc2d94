//! The witness role: a voting member that stores the Raft log and hard state
//! but applies no registry command and keeps no registry data. Two clusters
//! plus a witness keep a quorum when either cluster is lost, without a third
//! copy of the registry.
//!
//! What a witness keeps: the log (bounded by `keep_entries` behind the
//! commit index), hard state, membership and member addresses. What it does
//! not: services, endpoints, leases, watch history. Consequences, by design:
//! - it never sends a snapshot (it has none worth sending);
//! - replicas refuse its candidacy unless its log is longer than theirs
//!   (Raft election priority), so it only leads when it alone holds the
//!   newest committed entries, and then immediately hands leadership to the
//!   most caught-up replica after bringing it up to date from its log;
//! - while it leads, a replica that is further behind than the witness's
//!   log reaches cannot catch up until another replica leads (it needs a
//!   snapshot). `keep_entries` (50,000 by default for a witness) bounds
//!   that window.

use crate::config::NodeConfig;
use crate::handle::{FederationError, Handle, NodeStatus};
use crate::metrics::Metrics;
use crate::node::{Node, StartError};
use crate::transport::quic::{QuicConfig, QuicError, QuicTransport};
use std::future::Future;
use std::sync::Arc;

pub struct WitnessConfig {
    /// Made a witness by `run_witness` whatever `witness` says; build it with
    /// `NodeConfig::witness` for the witness defaults.
    pub node: NodeConfig,
    pub quic: QuicConfig,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("cannot start the witness's peer transport: {0}")]
    Transport(#[from] QuicError),
    #[error("cannot start the witness node: {0}")]
    Start(#[from] StartError),
}

/// A running witness (for callers that want its status while it runs).
pub struct Witness {
    node: Node,
    transport: Arc<QuicTransport>,
}

impl Witness {
    pub async fn start(cfg: WitnessConfig) -> Result<Witness, WitnessError> {
        let mut node_cfg = cfg.node;
        node_cfg.witness = true;
        if node_cfg.id != cfg.quic.id {
            return Err(WitnessError::Start(StartError::Config(format!(
                "node id {} and transport id {} differ",
                node_cfg.id, cfg.quic.id
            ))));
        }
        let (transport, inbound) = QuicTransport::start(cfg.quic, cfg.metrics.clone())?;
        let node = Node::start(node_cfg, transport.clone(), inbound, cfg.metrics).await?;
        Ok(Witness { node, transport })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.transport.local_addr()
    }

    pub async fn status(&self) -> Result<NodeStatus, FederationError> {
        self.node.handle().status().await
    }

    /// A handle for status and membership queries; registry reads and
    /// writes on it fail with `FederationError::Witness`.
    pub fn handle(&self) -> Handle {
        self.node.handle()
    }

    pub async fn stop(self) {
        self.node.stop().await;
        self.transport.close();
    }
}

/// Runs a witness until `shutdown` completes (the `isthmus federation
/// witness` process role), then stops it cleanly.
pub async fn run_witness(
    cfg: WitnessConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WitnessError> {
    let id = cfg.node.id;
    let witness = Witness::start(cfg).await?;
    tracing::info!(node = id, addr = ?witness.local_addr().ok(), "federation witness started");
    shutdown.await;
    tracing::info!(node = id, "federation witness stopping");
    witness.stop().await;
    Ok(())
}
