//! Commands replicated through the Raft log. Encoded as JSON inside the entry
//! data so a log dump stays readable by an operator; the proposal id travels in
//! the entry context so results are matched by id, never by arrival order.

use crate::model::{ClusterInfo, ClusterService, ServiceKey};
use serde::{Deserialize, Serialize};

/// The diff of one cluster's exported set: published as one command so a
/// control plane writes once per change, not once per endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishDiff {
    /// Services to insert or replace (each carries its full endpoint list).
    pub upserts: Vec<ClusterService>,
    /// Services this cluster no longer exports.
    pub removals: Vec<ServiceKey>,
}

impl PublishDiff {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterCluster(ClusterInfo),
    /// Removes a cluster and everything it published.
    DeregisterCluster {
        cluster: String,
    },
    Publish {
        cluster: String,
        diff: PublishDiff,
    },
    RenewLease {
        cluster: String,
    },
    /// Proposed by the leader when its lease clock passed the deadline.
    /// `renewed_at` is the log index of the renewal the leader saw last; a
    /// renewal that committed in between wins, which keeps expiry decided by
    /// the log alone.
    ExpireLease {
        cluster: String,
        renewed_at: u64,
    },
}

/// Identifies one proposal across retries: the proposing node and a counter
/// that node never reuses while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProposalId {
    pub node: u64,
    /// Start time of the proposing process (nanoseconds), so counters restarting
    /// at zero after a crash never collide with ids already in the log.
    pub epoch: u64,
    pub seq: u64,
}

impl ProposalId {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<ProposalId> {
        if bytes.len() != 24 {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        Some(ProposalId {
            node: word(0),
            epoch: word(1),
            seq: word(2),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot encode registry command: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("log entry at index {index} holds an undecodable registry command ({source}); the log was written by an incompatible version or is corrupt")]
    Decode {
        index: u64,
        #[source]
        source: serde_json::Error,
    },
}

impl Command {
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        serde_json::to_vec(self).map_err(CommandError::Encode)
    }

    pub fn decode(index: u64, data: &[u8]) -> Result<Command, CommandError> {
        serde_json::from_slice(data).map_err(|source| CommandError::Decode { index, source })
    }

    /// The cluster a command concerns (every command concerns exactly one).
    pub fn cluster(&self) -> &str {
        match self {
            Command::RegisterCluster(info) => &info.id,
            Command::DeregisterCluster { cluster }
            | Command::Publish { cluster, .. }
            | Command::RenewLease { cluster }
            | Command::ExpireLease { cluster, .. } => cluster,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_id_round_trips_and_rejects_bad_length() {
        let id = ProposalId {
            node: 3,
            epoch: 99,
            seq: u64::MAX,
        };
        assert_eq!(ProposalId::decode(&id.encode()), Some(id));
        assert_eq!(ProposalId::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn decode_error_names_the_index() {
        let err = Command::decode(42, b"{not json").unwrap_err();
        assert!(err.to_string().contains("index 42"), "{err}");
    }
}
