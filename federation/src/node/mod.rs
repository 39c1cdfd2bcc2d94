//! The federation node: one dedicated thread owns the raft-rs `RawNode`, the
//! durable storage and the state machine. It runs its own single-threaded
//! runtime because Raft requires entries to be fsynced before messages that
//! depend on them are sent: those fsyncs block this thread only, never the
//! control plane's runtime. Everything else talks to it through `Handle`.

mod ready;
mod requests;

use crate::command::ProposalId;
use crate::config::NodeConfig;
use crate::handle::{FederationError, Handle, Request};
use crate::lease::LeaseClock;
use crate::metrics::Metrics;
use crate::state::{Registry, RegistrySnapshot, StateImage};
use crate::storage::{DiskStorage, StorageOpenError, StorageWriteError};
use crate::transport::Transport;
use raft::eraftpb::{ConfState, Message, MessageType};
use raft::{RawNode, SnapshotStatus};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid federation node configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] StorageOpenError),
    #[error("the snapshot in the data directory does not decode as a registry image ({0}); restore it from a backup with `isthmus federation snapshot restore`")]
    Image(serde_json::Error),
    #[error("cannot write the new federation's first snapshot: {0}")]
    Bootstrap(StorageWriteError),
    #[error("cannot start Raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("cannot start the node thread: {0}")]
    Thread(std::io::Error),
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a running node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageWriteError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("snapshot from the leader does not decode as a registry image: {0}")]
    Image(serde_json::Error),
    #[error("received a witness's snapshot, which holds no registry data; a witness must never send snapshots (is a member misconfigured?)")]
    WitnessSnapshot,
}

/// A running node. Dropping it stops the node (without waiting); `stop`
/// waits until the storage is closed, e.g. before reopening the same
/// directory.
pub struct Node {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Opens the storage in `cfg.data_dir` (recovering state from the last
    /// snapshot and the log) and starts the node thread.
    pub async fn start(
        cfg: NodeConfig,
        transport: Arc<dyn Transport>,
        inbound: mpsc::Receiver<Message>,
        metrics: Metrics,
    ) -> Result<Node, StartError> {
        if cfg.id == 0 {
            return Err(StartError::Config("node id must not be 0".into()));
        }
        if cfg.election_ticks <= cfg.heartbeat_ticks {
            return Err(StartError::Config(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({})",
                cfg.election_ticks, cfg.heartbeat_ticks
            )));
        }
        let (req_tx, req_rx) = mpsc::channel(1024);
        let (view_tx, view_rx) = watch::channel(Arc::new(RegistrySnapshot::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (started_tx, started_rx) = oneshot::channel();
        let id = cfg.id;
        let thread = std::thread::Builder::new()
            .name(format!("federation-node-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(StartError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let core = match Core::open(cfg, transport, metrics, view_tx) {
                        Ok(core) => core,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    core.run(req_rx, inbound, stop_rx).await;
                });
            })
            .map_err(StartError::Thread)?;
        match started_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartError::Thread(std::io::Error::other(
                    "node thread exited during start-up",
                )));
            }
        }
        Ok(Node {
            handle: Handle {
                id,
                requests: req_tx,
                view: view_rx,
            },
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops the node and waits until its storage is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) struct PendingWrite {
    data: Vec<u8>,
    reply: Option<crate::handle::Reply<u64>>,
    started: Instant,
    deadline: Instant,
    /// Term of the last proposal attempt (0: not proposed yet).
    proposed_term: u64,
    proposed_at: Option<Instant>,
}

pub(crate) struct PendingRead {
    reply: crate::handle::Reply<Arc<RegistrySnapshot>>,
    started: Instant,
    deadline: Instant,
    issued_at: Option<Instant>,
}

pub(crate) struct PendingConf {
    reply: crate::handle::Reply<()>,
    started: Instant,
    deadline: Instant,
}

pub(crate) struct Core {
    cfg: NodeConfig,
    raw: RawNode<DiskStorage>,
    registry: Registry,
    transport: Arc<dyn Transport>,
    metrics: Metrics,
    view_tx: watch::Sender<Arc<RegistrySnapshot>>,
    epoch: u64,
    seq: u64,
    writes: HashMap<ProposalId, PendingWrite>,
    reads: HashMap<u64, PendingRead>,
    /// Confirmed reads waiting for the apply index to reach theirs.
    confirmed_reads: Vec<(u64, PendingRead)>,
    confs: HashMap<ProposalId, PendingConf>,
    leases: LeaseClock,
    leader: u64,
    conf_state: ConfState,
    /// Peers a snapshot was handed to the transport for, and when.
    snapshots_in_flight: HashMap<u64, Instant>,
    /// When the view was last published to watchers.
    published_at: Instant,
    /// A changed view waits for `view_publish_interval` to pass.
    publish_due: Option<Instant>,
}

impl Core {
    fn open(
        cfg: NodeConfig,
        transport: Arc<dyn Transport>,
        metrics: Metrics,
        view_tx: watch::Sender<Arc<RegistrySnapshot>>,
    ) -> Result<Core, StartError> {
        let mut storage = DiskStorage::open(&cfg.data_dir, &[])?;
        if storage.is_fresh() && !cfg.bootstrap_voters.is_empty() {
            let mut image = Registry::new(cfg.history_limit).to_image();
            image.applied_index = 1;
            image.witness = cfg.witness;
            let data = serde_json::to_vec(&image).map_err(StartError::Image)?;
            storage
                .bootstrap(&cfg.bootstrap_voters, data)
                .map_err(StartError::Bootstrap)?;
        }
        if cfg.witness {
            storage.refuse_snapshots();
        }
        let snap = storage.latest_snapshot().clone();
        let snap_index = snap.get_metadata().index;
        let mut registry = if snap_index > 0 {
            let image: StateImage =
                serde_json::from_slice(&snap.data).map_err(StartError::Image)?;
            if image.witness && !cfg.witness {
                return Err(StartError::Config(format!(
                    "the data directory {} belongs to a witness (it holds no registry data); start it as a witness, or give this replica an empty directory",
                    cfg.data_dir.display()
                )));
            }
            Registry::from_image(image, cfg.history_limit)
        } else {
            Registry::new(cfg.history_limit)
        };
        let conf_state = storage.conf_state().clone();
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: snap_index,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            // A leader cut off from its quorum steps down, and a node
            // rejoining after a partition does not disrupt the term.
            check_quorum: true,
            pre_vote: true,
            // Replicas refuse a witness's candidacy unless its log is longer
            // than theirs: a witness only leads when it alone holds the
            // newest entries, and then hands over (see `on_tick`).
            priority: if cfg.witness { 0 } else { 1 },
            ..Default::default()
        };
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, storage, &crate::slog_bridge::logger(cfg.id))?;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let leases = LeaseClock::new(cfg.lease.ttl, cfg.lease.grace);
        view_tx.send_replace(registry.view());
        registry.take_changed();
        let core = Core {
            cfg,
            raw,
            registry,
            transport,
            metrics,
            view_tx,
            epoch,
            seq: 0,
            writes: HashMap::new(),
            reads: HashMap::new(),
            confirmed_reads: Vec::new(),
            confs: HashMap::new(),
            leases,
            leader: 0,
            conf_state,
            snapshots_in_flight: HashMap::new(),
            published_at: Instant::now(),
            publish_due: None,
        };
        // Members added at run time are known from the snapshot; those in
        // the log are announced again as the log replays.
        core.announce_members();
        Ok(core)
    }

    fn next_id(&mut self) -> ProposalId {
        self.seq += 1;
        ProposalId {
            node: self.cfg.id,
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbound: mpsc::Receiver<Message>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut ticker = tokio::time::interval(self.cfg.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let id = self.cfg.id;
        tracing::info!(node = id, "federation node started");
        loop {
            let publish_due = self.publish_due;
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.on_tick();
                }
                _ = sleep_until_some(publish_due) => self.publish_view_now(),
                msg = inbound.recv() => {
                    let Some(msg) = msg else { break };
                    self.step(msg);
                    // Drain what is queued so one Ready covers a burst.
                    for _ in 0..256 {
                        match inbound.try_recv() {
                            Ok(m) => self.step(m),
                            Err(_) => break,
                        }
                    }
                }
                req = requests.recv() => {
                    let Some(req) = req else { break };
                    self.on_request(req);
                    for _ in 0..256 {
                        match requests.try_recv() {
                            Ok(r) => self.on_request(r),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(e) = self.on_ready() {
                tracing::error!(node = id, error = %e, "federation node stopping after a fatal error");
                break;
            }
            if inbound.is_empty() && requests.is_empty() {
                // Idle (typically waiting for acks): copy the published view
                // now rather than when the next commit is applied.
                self.registry.detach_view();
            }
        }
        self.fail_all();
        tracing::info!(node = id, "federation node stopped");
    }

    fn step(&mut self, msg: Message) {
        if msg.to != self.cfg.id {
            tracing::debug!(
                to = msg.to,
                "dropping raft message addressed to another node"
            );
            return;
        }
        if msg.get_msg_type() == MessageType::MsgSnapStatus {
            // Only the transport produces these (it drops network-received
            // node-local types): a snapshot to `from` was or was not delivered.
            self.snapshots_in_flight.remove(&msg.from);
            let status = if msg.reject {
                SnapshotStatus::Failure
            } else {
                SnapshotStatus::Finish
            };
            self.raw.report_snapshot(msg.from, status);
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(error = %e, "raft refused a message");
        }
    }

    /// Answers everything still pending when the node stops.
    fn fail_all(&mut self) {
        for (_, w) in self.writes.drain() {
            if let Some(r) = w.reply {
                let _ = r.send(Err(FederationError::Stopped));
            }
        }
        for (_, r) in self.reads.drain() {
            let _ = r.reply.send(Err(FederationError::Stopped));
        }
        for (_, r) in self.confirmed_reads.drain(..) {
            let _ = r.reply.send(Err(FederationError::Stopped));
        }
        for (_, c) in self.confs.drain() {
            let _ = c.reply.send(Err(FederationError::Stopped));
        }
    }
}
