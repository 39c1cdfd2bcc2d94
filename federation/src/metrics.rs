//! Prometheus metrics of one federation node. Registered on the caller's
//! registry (the control plane's `/metrics`), or on a private one in tests.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub proposals: IntCounter,
    pub proposals_failed: IntCounterVec,
    pub committed_entries: IntCounter,
    pub apply_seconds: Histogram,
    pub leader_changes: IntCounter,
    pub snapshots_sent: IntCounter,
    pub snapshots_taken: IntCounter,
    pub snapshots_installed: IntCounter,
    pub term: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub is_leader: IntGauge,
    pub registry_revision: IntGauge,
    pub transport_dropped: IntCounterVec,
    pub transport_malformed: IntCounter,
    pub transport_refused_peers: IntCounterVec,
    pub snapshots_failed: IntCounter,
    pub snapshot_bytes_sent: IntCounter,
    pub peer_rtt_seconds: prometheus::GaugeVec,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics::unregistered()?;
        registry.register(Box::new(m.proposals.clone()))?;
        registry.register(Box::new(m.proposals_failed.clone()))?;
        registry.register(Box::new(m.committed_entries.clone()))?;
        registry.register(Box::new(m.apply_seconds.clone()))?;
        registry.register(Box::new(m.leader_changes.clone()))?;
        registry.register(Box::new(m.snapshots_sent.clone()))?;
        registry.register(Box::new(m.snapshots_taken.clone()))?;
        registry.register(Box::new(m.snapshots_installed.clone()))?;
        registry.register(Box::new(m.term.clone()))?;
        registry.register(Box::new(m.commit_index.clone()))?;
        registry.register(Box::new(m.applied_index.clone()))?;
        registry.register(Box::new(m.is_leader.clone()))?;
        registry.register(Box::new(m.registry_revision.clone()))?;
        registry.register(Box::new(m.transport_dropped.clone()))?;
        registry.register(Box::new(m.transport_malformed.clone()))?;
        registry.register(Box::new(m.transport_refused_peers.clone()))?;
        registry.register(Box::new(m.snapshots_failed.clone()))?;
        registry.register(Box::new(m.snapshot_bytes_sent.clone()))?;
        registry.register(Box::new(m.peer_rtt_seconds.clone()))?;
        Ok(m)
    }

    /// Metrics not exported anywhere (tests, tools).
    pub fn unregistered() -> Result<Metrics, prometheus::Error> {
        let c = |n: &str, h: &str| IntCounter::new(format!("isthmus_federation_{n}"), h);
        let g = |n: &str, h: &str| IntGauge::new(format!("isthmus_federation_{n}"), h);
        Ok(Metrics {
            proposals: c("proposals_total", "Registry commands proposed by this node")?,
            proposals_failed: IntCounterVec::new(
                Opts::new(
                    "isthmus_federation_proposals_failed_total",
                    "Proposals that failed, by reason",
                ),
                &["reason"],
            )?,
            committed_entries: c(
                "committed_entries_total",
                "Raft entries committed and applied",
            )?,
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "isthmus_federation_apply_seconds",
                    "Time to apply one batch of committed entries",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                ]),
            )?,
            leader_changes: c("leader_changes_total", "Leader changes seen by this node")?,
            snapshots_sent: c(
                "snapshots_sent_total",
                "Raft snapshots sent to lagging peers",
            )?,
            snapshots_taken: c(
                "snapshots_taken_total",
                "Snapshots taken for log compaction",
            )?,
            snapshots_installed: c(
                "snapshots_installed_total",
                "Snapshots received and installed",
            )?,
            term: g("term", "Current Raft term")?,
            commit_index: g("commit_index", "Raft commit index")?,
            applied_index: g("applied_index", "Raft applied index")?,
            is_leader: g("is_leader", "1 when this node leads the federation")?,
            registry_revision: g(
                "registry_revision",
                "Registry revision applied on this node",
            )?,
            transport_dropped: IntCounterVec::new(
                Opts::new(
                    "isthmus_federation_transport_dropped_total",
                    "Raft messages dropped by the transport, by reason",
                ),
                &["reason"],
            )?,
            transport_malformed: c(
                "transport_malformed_total",
                "Inbound peer frames rejected as malformed or oversized",
            )?,
            transport_refused_peers: IntCounterVec::new(
                Opts::new(
                    "isthmus_federation_transport_refused_peers_total",
                    "Peer connections or streams refused, by reason: tls (handshake), hello (bad stream hello), identity (certificate not the one of the claimed node id), outbound_identity (the peer we dialed is not the node configured at that address)",
                ),
                &["reason"],
            )?,
            snapshots_failed: c(
                "snapshots_failed_total",
                "Raft snapshots that did not reach the peer (the leader retries)",
            )?,
            snapshot_bytes_sent: c(
                "snapshot_bytes_sent_total",
                "Bytes of Raft snapshots sent to peers",
            )?,
            peer_rtt_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "isthmus_federation_peer_rtt_seconds",
                    "QUIC round-trip time per peer",
                ),
                &["peer"],
            )?,
        })
    }
}

impl Metrics {
    /// Refused peers over every reason.
    pub fn refused_peers_total(&self) -> u64 {
        ["tls", "hello", "identity", "outbound_identity"]
            .iter()
            .map(|r| self.transport_refused_peers.with_label_values(&[r]).get())
            .sum()
    }
}
