//! Node configuration. Timing is configurable so tests can run fast; the
//! defaults suit a WAN federation of a handful of clusters.

use std::path::PathBuf;
use std::time::Duration;

/// Lease timing. A cluster's control plane renews every `renew_interval`;
/// the leader proposes expiry when no renewal committed for `ttl` (measured on
/// the leader's monotonic clock). A new leader waits `ttl + grace` before
/// expiring anything, because it cannot know how long ago the last renewal
/// reached the old leader.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub renew_interval: Duration,
    pub ttl: Duration,
    pub grace: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            renew_interval: Duration::from_secs(1),
            ttl: Duration::from_secs(3),
            grace: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Raft id, unique in the federation, never 0.
    pub id: u64,
    /// Directory for the Raft log and snapshots; one per node.
    pub data_dir: PathBuf,
    /// Voters of a brand-new federation (ignored once the data dir holds
    /// state). Empty for a node that joins an existing federation.
    pub bootstrap_voters: Vec<u64>,
    pub tick_interval: Duration,
    /// Election timeout in ticks (randomized by Raft in [n, 2n)).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// How long a write or linearizable read waits for a leader and a commit
    /// before failing with `NoLeader`/`NoQuorum`.
    pub request_timeout: Duration,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept behind the snapshot so a slightly lagging follower
    /// catches up from the log instead of a snapshot.
    pub keep_entries: u64,
    /// Watch history length in events; older revisions get `Compacted`.
    pub history_limit: usize,
    pub max_size_per_msg: u64,
    /// Largest encoded command accepted for proposal. Must stay well under
    /// the transport's frame limit (QUIC `max_message_bytes`, 16 MiB), or an
    /// entry that cannot be replicated would stall the log.
    pub max_entry_bytes: usize,
    /// How long a snapshot send may go unreported by the transport before
    /// the leader counts it as failed and retries.
    pub snapshot_timeout: Duration,
    pub max_inflight_msgs: usize,
    pub lease: LeaseConfig,
    /// Least time between two views published to watchers (and to
    /// `Handle::snapshot_stale`). Publishing shares the view, so the next
    /// change copies the whole registry: under a stream of writes that copy
    /// is the node's main cost, and this bound makes it one per interval
    /// instead of one per commit. A change after a quiet interval is
    /// published at once; linearizable reads never wait for it.
    pub view_publish_interval: Duration,
    /// A witness votes and stores the log but applies no registry command
    /// and keeps no registry data (see `witness`). It never serves snapshots
    /// and hands leadership to a replica whenever it wins an election.
    pub witness: bool,
}

impl NodeConfig {
    pub fn new(id: u64, data_dir: impl Into<PathBuf>, bootstrap_voters: Vec<u64>) -> NodeConfig {
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            bootstrap_voters,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            request_timeout: Duration::from_secs(5),
            snapshot_every: 10_000,
            keep_entries: 1_000,
            history_limit: 10_000,
            max_size_per_msg: 1 << 20,
            max_entry_bytes: 8 << 20,
            snapshot_timeout: Duration::from_secs(180),
            max_inflight_msgs: 256,
            lease: LeaseConfig::default(),
            view_publish_interval: Duration::from_millis(10),
            witness: false,
        }
    }

    /// A witness: keeps more log than a replica (it cannot send snapshots,
    /// so the log is all it can catch a lagging replica up with while it
    /// leads) and applies nothing.
    pub fn witness(
        id: u64,
        data_dir: impl Into<PathBuf>,
        bootstrap_voters: Vec<u64>,
    ) -> NodeConfig {
        let mut cfg = NodeConfig::new(id, data_dir, bootstrap_voters);
        cfg.witness = true;
        cfg.keep_entries = 50_000;
        cfg
    }

    /// Election timeout as wall time (the lower bound Raft uses).
    pub fn election_timeout(&self) -> Duration {
        self.tick_interval * self.election_ticks as u32
    }
}
