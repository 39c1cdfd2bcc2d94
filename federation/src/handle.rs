//! The client-facing API of a federation node: a cheap, cloneable handle that
//! talks to the node task over channels. This is what the control plane uses.

use crate::command::{Command, CommandError, PublishDiff};
use crate::model::ClusterInfo;
use crate::state::{Compacted, Event, RegistrySnapshot, Rejected};
use futures::stream::{BoxStream, StreamExt};
use raft::eraftpb::ConfChangeV2;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Events fetched per request by a watch stream.
const WATCH_BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("no federation leader known to node {node} after {waited:?}: this node is probably cut off from a majority of the federation; check the Raft peer connectivity (UDP 15031) and `isthmus federation status`")]
    NoLeader { node: u64, waited: Duration },
    #[error("request not committed within {waited:?} (leader: node {leader}, term {term}): the leader cannot reach a quorum, or this node cannot reach the leader; check `isthmus federation status` on the members")]
    NoQuorum {
        leader: u64,
        term: u64,
        waited: Duration,
    },
    #[error("registry refused the command: {0}")]
    Rejected(#[from] Rejected),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("membership change refused: {0}")]
    ConfChange(String),
    #[error("the federation node has stopped (see its log for the cause)")]
    Stopped,
    #[error("registry command of {bytes} bytes exceeds the {max}-byte limit; publish a large export as several smaller diffs (e.g. one per service)")]
    TooLarge { bytes: usize, max: usize },
    #[error("node {node} is a witness: it holds no registry data and serves no reads or writes; use a cluster's control plane")]
    Witness { node: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("revision {requested} was compacted (history starts after {compacted}); re-read the registry with a snapshot and watch from its revision + 1")]
    Compacted { requested: u64, compacted: u64 },
    #[error("the federation node has stopped")]
    Stopped,
}

impl From<Compacted> for WatchError {
    fn from(c: Compacted) -> Self {
        WatchError::Compacted {
            requested: c.requested,
            compacted: c.compacted,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub id: u64,
    pub match_index: u64,
    pub next_index: u64,
    /// Entries the peer is behind the leader's last index.
    pub lag: u64,
    pub learner: bool,
    /// Replication state as raft-rs names it (Probe, Replicate, Snapshot).
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    /// 0 when no leader is known.
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    /// First index still in the log (earlier entries live only in the snapshot).
    pub first_index: u64,
    /// Index of the latest snapshot on this node (0: none).
    pub snapshot_index: u64,
    pub revision: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Replication progress per peer; only the leader knows it.
    pub peers: Vec<PeerStatus>,
}

/// Registry events in revision order; see `Handle::watch`.
pub type WatchStream = BoxStream<'static, Result<Event, WatchError>>;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, FederationError>>;

pub(crate) enum Request {
    Propose {
        cmd: Command,
        reply: Reply<u64>,
    },
    Read {
        reply: Reply<Arc<RegistrySnapshot>>,
    },
    Events {
        from: u64,
        max: usize,
        reply: oneshot::Sender<Result<Vec<Event>, Compacted>>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
    Image {
        reply: oneshot::Sender<crate::state::StateImage>,
    },
    ConfChange {
        cc: ConfChangeV2,
        addrs: Vec<(u64, String)>,
        reply: Reply<()>,
    },
    TransferLeader {
        to: u64,
    },
}

#[derive(Clone)]
pub struct Handle {
    pub(crate) id: u64,
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) view: watch::Receiver<Arc<RegistrySnapshot>>,
}

impl Handle {
    pub fn id(&self) -> u64 {
        self.id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, FederationError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| FederationError::Stopped)?;
        rx.await.map_err(|_| FederationError::Stopped)
    }

    /// Proposes a command; returns the registry revision after it applied.
    pub async fn propose(&self, cmd: Command) -> Result<u64, FederationError> {
        self.call(|reply| Request::Propose { cmd, reply }).await?
    }

    pub async fn register_cluster(&self, info: ClusterInfo) -> Result<u64, FederationError> {
        self.propose(Command::RegisterCluster(info)).await
    }

    pub async fn deregister_cluster(&self, cluster: &str) -> Result<u64, FederationError> {
        self.propose(Command::DeregisterCluster {
            cluster: cluster.to_string(),
        })
        .await
    }

    /// Publishes the diff of `cluster`'s exported set as one command.
    pub async fn publish(&self, cluster: &str, diff: PublishDiff) -> Result<u64, FederationError> {
        self.propose(Command::Publish {
            cluster: cluster.to_string(),
            diff,
        })
        .await
    }

    pub async fn renew_lease(&self, cluster: &str) -> Result<u64, FederationError> {
        self.propose(Command::RenewLease {
            cluster: cluster.to_string(),
        })
        .await
    }

    /// Renews `cluster`'s lease every `interval` until the returned task is
    /// aborted or the node stops. Failures are logged and retried.
    pub fn spawn_lease_renewer(
        &self,
        cluster: String,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match handle.renew_lease(&cluster).await {
                    Ok(_) => {}
                    Err(FederationError::Stopped) => return,
                    Err(e) => {
                        tracing::warn!(cluster = %cluster, error = %e, "lease renewal failed")
                    }
                }
            }
        })
    }

    /// This node's applied view, possibly stale (no quorum needed; served
    /// even from a minority partition).
    pub fn snapshot_stale(&self) -> Arc<RegistrySnapshot> {
        self.view.borrow().clone()
    }

    /// The applied view as a watch: what the translator subscribes to.
    pub fn watch_snapshot(&self) -> watch::Receiver<Arc<RegistrySnapshot>> {
        self.view.clone()
    }

    /// A view that includes every write acknowledged before the call
    /// (Raft ReadIndex); fails with `NoLeader`/`NoQuorum` in a minority.
    pub async fn read_linearizable(&self) -> Result<Arc<RegistrySnapshot>, FederationError> {
        self.call(|reply| Request::Read { reply }).await?
    }

    pub async fn status(&self) -> Result<NodeStatus, FederationError> {
        self.call(|reply| Request::Status { reply }).await
    }

    /// A consistent image of the whole registry that includes every write
    /// acknowledged before the call (for `snapshot save`).
    pub async fn consistent_image(&self) -> Result<crate::state::StateImage, FederationError> {
        self.read_linearizable().await?;
        // The node applies in order, so its image now is at least as new as
        // the read index confirmed above.
        self.call(|reply| Request::Image { reply }).await
    }

    /// Proposes a membership change (joint consensus when it touches more
    /// than one node). `addrs` tells every member's transport where new
    /// members listen.
    pub async fn change_membership(
        &self,
        cc: ConfChangeV2,
        addrs: Vec<(u64, String)>,
    ) -> Result<(), FederationError> {
        self.call(|reply| Request::ConfChange { cc, addrs, reply })
            .await?
    }

    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<(), FederationError> {
        self.single_change(raft::eraftpb::ConfChangeType::AddNode, id, Some(addr))
            .await
    }

    pub async fn add_learner(&self, id: u64, addr: &str) -> Result<(), FederationError> {
        self.single_change(
            raft::eraftpb::ConfChangeType::AddLearnerNode,
            id,
            Some(addr),
        )
        .await
    }

    pub async fn remove_node(&self, id: u64) -> Result<(), FederationError> {
        self.single_change(raft::eraftpb::ConfChangeType::RemoveNode, id, None)
            .await
    }

    async fn single_change(
        &self,
        kind: raft::eraftpb::ConfChangeType,
        id: u64,
        addr: Option<&str>,
    ) -> Result<(), FederationError> {
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let addrs = addr.map(|a| vec![(id, a.to_string())]).unwrap_or_default();
        self.change_membership(cc, addrs).await
    }

    /// Asks the leader to hand leadership to `to` (best effort; watch `status`).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), FederationError> {
        self.requests
            .send(Request::TransferLeader { to })
            .await
            .map_err(|_| FederationError::Stopped)
    }

    /// Ordered registry events with revision >= `from`. Resume after a
    /// disconnect with the last seen revision + 1: no gaps, no duplicates.
    /// Ends with `WatchError::Compacted` when `from` is older than the
    /// retained history.
    pub fn watch(&self, from: u64) -> WatchStream {
        struct St {
            handle: Handle,
            next: u64,
            buf: VecDeque<Event>,
            done: bool,
        }
        let st = St {
            handle: self.clone(),
            next: from.max(1),
            buf: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                if let Some(e) = st.buf.pop_front() {
                    return Some((Ok(e), st));
                }
                let from = st.next;
                let got = st
                    .handle
                    .call(|reply| Request::Events {
                        from,
                        max: WATCH_BATCH,
                        reply,
                    })
                    .await;
                match got {
                    Err(_) => {
                        st.done = true;
                        return Some((Err(WatchError::Stopped), st));
                    }
                    Ok(Err(c)) => {
                        st.done = true;
                        return Some((Err(c.into()), st));
                    }
                    Ok(Ok(events)) if events.is_empty() => {
                        let mut view = st.handle.view.clone();
                        if view.wait_for(|v| v.revision >= from).await.is_err() {
                            st.done = true;
                            return Some((Err(WatchError::Stopped), st));
                        }
                    }
                    Ok(Ok(events)) => {
                        if let Some(last) = events.last() {
                            st.next = last.revision + 1;
                        }
                        st.buf.extend(events);
                    }
                }
            }
        })
        .boxed()
    }
}

impl std::fmt::Display for NodeStatus {
    /// The text `isthmus federation status` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let leader = if self.leader == 0 {
            "none".to_string()
        } else {
            self.leader.to_string()
        };
        writeln!(
            f,
            "node {}: {:?}, leader {leader}, term {}",
            self.id, self.role, self.term
        )?;
        writeln!(
            f,
            "log: first {} last {} commit {} applied {} snapshot {}; registry revision {}",
            self.first_index,
            self.last_index,
            self.commit,
            self.applied,
            self.snapshot_index,
            self.revision
        )?;
        writeln!(f, "voters: {:?} learners: {:?}", self.voters, self.learners)?;
        if !self.peers.is_empty() {
            writeln!(
                f,
                "{:>6} {:>8} {:>10} {:>10} {:>8}  state",
                "peer", "role", "match", "next", "lag"
            )?;
            for p in &self.peers {
                let role = if p.learner { "learner" } else { "voter" };
                writeln!(
                    f,
                    "{:>6} {:>8} {:>10} {:>10} {:>8}  {}",
                    p.id, role, p.match_index, p.next_index, p.lag, p.state
                )?;
            }
        }
        Ok(())
    }
}
