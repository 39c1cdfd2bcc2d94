//! Joining and leaving a running federation, over the peer transport.
//!
//! A joining node starts with no voters, reaches a seed member over the
//! mutually authenticated QUIC transport and sends a [`MemberRequest::Join`]
//! on a request stream. A member that is not the leader forwards the request
//! (one hop) to the leader, which adds the node as a learner and tells every
//! member where all members live (the addresses ride in the membership change
//! entry, so they are in every log and snapshot: a restarted member needs no
//! token). The leader's [`spawn_promoter`] makes caught-up learners voters
//! while the federation has fewer voters than its maximum.
//!
//! Leaving is the reverse: a `Leave` reaches the leader, which removes the
//! node with a ConfChangeV2; when the leader itself leaves it first hands
//! leadership to the most caught-up other voter.

use crate::handle::{FederationError, Handle, NodeStatus, Role};
use crate::transport::quic::QuicTransport;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

mod promote;
pub use promote::{promotable, spawn_promoter};

/// Voters a federation grows to by promoting learners; members beyond it
/// stay learners (replicas that do not vote).
pub const DEFAULT_MAX_VOTERS: usize = 5;

/// How long one forwarded request may take end to end.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberRequest {
    /// Add `node` (listening on `address`) as a learner.
    Join {
        node: u64,
        /// The cluster (or witness) name, for logs.
        name: String,
        address: String,
        #[serde(default)]
        forwarded: bool,
    },
    /// Remove `node` from the federation.
    Leave {
        node: u64,
        #[serde(default)]
        forwarded: bool,
    },
}

impl MemberRequest {
    fn forwarded(&self) -> MemberRequest {
        let mut out = self.clone();
        match &mut out {
            MemberRequest::Join { forwarded, .. } | MemberRequest::Leave { forwarded, .. } => {
                *forwarded = true
            }
        }
        out
    }

    fn is_forwarded(&self) -> bool {
        match self {
            MemberRequest::Join { forwarded, .. } | MemberRequest::Leave { forwarded, .. } => {
                *forwarded
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum MemberReply {
    /// The node is a member (learner or voter); `members` are every
    /// member's federation address as the leader knows them.
    Joined {
        leader: u64,
        members: Vec<(u64, String)>,
    },
    /// The node is no longer a member.
    Left { leader: u64 },
    /// Not now (no leader, a membership change in progress): try again.
    Retry { reason: String },
    /// Never: the request itself is not acceptable.
    Refused { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("no federation seed reachable ({tried}); check the seed addresses in the join token, that UDP to them is open, and that this cluster's intermediate is signed by the federation's root")]
    NoSeedReachable { tried: String },
    #[error("the federation did not complete the request before the deadline: {reason}")]
    Unavailable { reason: String },
    #[error("the federation refused: {reason}")]
    Refused { reason: String },
    #[error(transparent)]
    Federation(#[from] FederationError),
}

/// Serves membership requests for one node and performs them on its behalf.
#[derive(Clone)]
pub struct Membership {
    handle: Handle,
    transport: Arc<QuicTransport>,
    /// This node's federation address as other members reach it.
    advertise: String,
}

impl Membership {
    pub fn new(handle: Handle, transport: Arc<QuicTransport>, advertise: &str) -> Membership {
        Membership {
            handle,
            transport,
            advertise: advertise.to_string(),
        }
    }

    /// Answers request streams from now on.
    pub fn install(&self) {
        // The transport owns the handler, so the handler holds the transport
        // weakly: a strong reference would be a cycle that keeps the QUIC
        // endpoint (and its UDP port) alive after the node is closed, and a
        // restart on the same address would fail with "address in use".
        let transport = Arc::downgrade(&self.transport);
        let handle = self.handle.clone();
        let advertise = self.advertise.clone();
        self.transport
            .set_request_handler(Arc::new(move |from: u64, body: Vec<u8>| {
                let this = transport.upgrade().map(|transport| Membership {
                    handle: handle.clone(),
                    transport,
                    advertise: advertise.clone(),
                });
                Box::pin(async move {
                    match this {
                        Some(this) => this.answer(from, &body).await,
                        // Closing: an empty answer reads as "retry".
                        None => Vec::new(),
                    }
                })
            }));
    }

    async fn answer(&self, from: u64, body: &[u8]) -> Vec<u8> {
        let reply = match serde_json::from_slice::<MemberRequest>(body) {
            Ok(req) => self.execute(from, req).await,
            Err(e) => MemberReply::Refused {
                reason: format!("unreadable membership request: {e}"),
            },
        };
        tracing::info!(from, ?reply, "answered a federation membership request");
        serde_json::to_vec(&reply).unwrap_or_default()
    }

    /// Performs `req` sent by node `from` (authenticated by the transport,
    /// or this node itself for local operator commands).
    pub async fn execute(&self, from: u64, req: MemberRequest) -> MemberReply {
        let status = match self.handle.status().await {
            Ok(s) => s,
            Err(e) => {
                return MemberReply::Retry {
                    reason: e.to_string(),
                }
            }
        };
        let me = self.handle.id();
        let is_member = |id: u64| status.voters.contains(&id) || status.learners.contains(&id);
        match &req {
            // Members forward requests on behalf of others; anyone else
            // speaks only for itself.
            MemberRequest::Join { node, .. }
                if from != *node && from != me && !(is_member(from) && req.is_forwarded()) =>
            {
                return MemberReply::Refused {
                    reason: format!(
                        "node {from} may only ask to join as itself, not as node {node}"
                    ),
                };
            }
            MemberRequest::Leave { node, .. }
                if from != me && from != *node && !(is_member(from) && req.is_forwarded()) =>
            {
                return MemberReply::Refused {
                    reason: format!("node {from} may only ask to remove itself, not node {node}"),
                };
            }
            _ => {}
        }
        if status.role != Role::Leader {
            return self.forward(&status, &req).await;
        }
        match req {
            MemberRequest::Join {
                node,
                name,
                address,
                ..
            } => self.join_at_leader(&status, node, &name, &address).await,
            MemberRequest::Leave { node, .. } => self.leave_at_leader(&status, node).await,
        }
    }

    async fn forward(&self, status: &NodeStatus, req: &MemberRequest) -> MemberReply {
        if req.is_forwarded() {
            return MemberReply::Retry {
                reason: format!(
                    "node {} is no longer the leader (leader now: {})",
                    status.id, status.leader
                ),
            };
        }
        if status.leader == 0 {
            return MemberReply::Retry {
                reason: format!("node {} knows no federation leader", status.id),
            };
        }
        let body = match serde_json::to_vec(&req.forwarded()) {
            Ok(b) => b,
            Err(e) => {
                return MemberReply::Refused {
                    reason: e.to_string(),
                }
            }
        };
        match self
            .transport
            .request(status.leader, &body, FORWARD_TIMEOUT)
            .await
        {
            Ok(reply) => decode_reply(&reply),
            Err(e) => MemberReply::Retry {
                reason: format!("forwarding to leader {}: {e}", status.leader),
            },
        }
    }

    async fn join_at_leader(
        &self,
        status: &NodeStatus,
        node: u64,
        name: &str,
        address: &str,
    ) -> MemberReply {
        let mut members = self.transport.peer_addrs();
        members.retain(|(id, _)| *id != node && *id != status.id);
        members.push((status.id, self.advertise.clone()));
        members.push((node, address.to_string()));
        members.sort();
        if status.voters.contains(&node) || status.learners.contains(&node) {
            return MemberReply::Joined {
                leader: status.id,
                members,
            };
        }
        let cc = single(ConfChangeType::AddLearnerNode, node);
        match self.handle.change_membership(cc, members.clone()).await {
            Ok(()) => {
                tracing::info!(node, name, address, "added a joining node as a learner");
                MemberReply::Joined {
                    leader: status.id,
                    members,
                }
            }
            Err(e) => MemberReply::Retry {
                reason: e.to_string(),
            },
        }
    }

    async fn leave_at_leader(&self, status: &NodeStatus, node: u64) -> MemberReply {
        if !status.voters.contains(&node) && !status.learners.contains(&node) {
            return MemberReply::Left { leader: status.id };
        }
        if node == status.id {
            return self.hand_over_then_leave(status).await;
        }
        if status.voters.len() == 1 && status.voters.contains(&node) {
            return MemberReply::Refused {
                reason: format!(
                    "node {node} is the only voter; a federation cannot remove its last voter"
                ),
            };
        }
        match self
            .handle
            .change_membership(single(ConfChangeType::RemoveNode, node), Vec::new())
            .await
        {
            Ok(()) => {
                tracing::info!(node, "removed a member from the federation");
                MemberReply::Left { leader: status.id }
            }
            Err(e) => MemberReply::Retry {
                reason: e.to_string(),
            },
        }
    }

    /// The leader cannot usefully remove itself (it would lead a group it
    /// is not part of until the change commits): hand leadership to the
    /// most caught-up other voter, then ask the new leader to remove us.
    async fn hand_over_then_leave(&self, status: &NodeStatus) -> MemberReply {
        let Some(to) = status
            .peers
            .iter()
            .filter(|p| !p.learner && status.voters.contains(&p.id))
            .max_by_key(|p| (p.match_index, std::cmp::Reverse(p.id)))
            .map(|p| p.id)
        else {
            return MemberReply::Refused {
                reason: format!(
                    "node {} is the only voter; a federation cannot remove its last voter",
                    status.id
                ),
            };
        };
        tracing::info!(
            node = status.id,
            to,
            "leader is leaving: transferring leadership first"
        );
        if let Err(e) = self.handle.transfer_leader(to).await {
            return MemberReply::Retry {
                reason: e.to_string(),
            };
        }
        let deadline = Instant::now() + FORWARD_TIMEOUT / 2;
        loop {
            match self.handle.status().await {
                Ok(s) if s.leader != 0 && s.leader != status.id => {
                    let req = MemberRequest::Leave {
                        node: status.id,
                        forwarded: false,
                    };
                    return self.forward(&s, &req).await;
                }
                Ok(_) => {}
                Err(e) => {
                    return MemberReply::Retry {
                        reason: e.to_string(),
                    }
                }
            }
            if Instant::now() >= deadline {
                return MemberReply::Retry {
                    reason: format!("leadership did not move to node {to} in time"),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes `node` from the federation (forwarded to the leader), retrying
    /// transient failures until `timeout`.
    pub async fn leave(&self, node: u64, timeout: Duration) -> Result<u64, MembershipError> {
        let deadline = Instant::now() + timeout;
        loop {
            let req = MemberRequest::Leave {
                node,
                forwarded: false,
            };
            match self.execute(self.handle.id(), req).await {
                MemberReply::Left { leader } => return Ok(leader),
                MemberReply::Refused { reason } => return Err(MembershipError::Refused { reason }),
                MemberReply::Joined { .. } => {
                    return Err(MembershipError::Refused {
                        reason: "unexpected answer to a leave request".into(),
                    })
                }
                MemberReply::Retry { reason } => {
                    if Instant::now() >= deadline {
                        return Err(MembershipError::Unavailable { reason });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Adds a node on an operator's behalf (`isthmus federation join`).
    pub async fn add(
        &self,
        node: u64,
        name: &str,
        address: &str,
        timeout: Duration,
    ) -> Result<Vec<(u64, String)>, MembershipError> {
        let deadline = Instant::now() + timeout;
        loop {
            let req = MemberRequest::Join {
                node,
                name: name.to_string(),
                address: address.to_string(),
                forwarded: false,
            };
            match self.execute(self.handle.id(), req).await {
                MemberReply::Joined { members, .. } => return Ok(members),
                MemberReply::Refused { reason } => return Err(MembershipError::Refused { reason }),
                MemberReply::Left { .. } => {
                    return Err(MembershipError::Refused {
                        reason: "unexpected answer to a join request".into(),
                    })
                }
                MemberReply::Retry { reason } => {
                    if Instant::now() >= deadline {
                        return Err(MembershipError::Unavailable { reason });
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn decode_reply(body: &[u8]) -> MemberReply {
    if body.is_empty() {
        return MemberReply::Retry {
            reason: "the member is still starting (no membership service yet)".into(),
        };
    }
    serde_json::from_slice(body).unwrap_or_else(|e| MemberReply::Refused {
        reason: format!("unreadable answer: {e}"),
    })
}

fn single(kind: ConfChangeType, node: u64) -> ConfChangeV2 {
    let mut s = ConfChangeSingle::default();
    s.set_change_type(kind);
    s.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(s);
    cc
}

/// The joining side: asks the seeds, in turn, until one answers `Joined`
/// (forwarded to the leader by whichever seed is reached) or `Refused`, or
/// `timeout` passes. The seeds must already be peers of `transport`.
pub async fn join_via_seeds(
    transport: &QuicTransport,
    me: u64,
    name: &str,
    address: &str,
    seeds: &[u64],
    timeout: Duration,
) -> Result<Vec<(u64, String)>, MembershipError> {
    let deadline = Instant::now() + timeout;
    let body = serde_json::to_vec(&MemberRequest::Join {
        node: me,
        name: name.to_string(),
        address: address.to_string(),
        forwarded: false,
    })
    .map_err(|e| MembershipError::Refused {
        reason: e.to_string(),
    })?;
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut tried = Vec::new();
        let mut answered = false;
        for seed in seeds {
            let per_try = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(500), FORWARD_TIMEOUT);
            match transport.request(*seed, &body, per_try).await {
                Ok(reply) => {
                    answered = true;
                    match decode_reply(&reply) {
                        MemberReply::Joined { members, leader } => {
                            tracing::info!(
                                node = me,
                                seed,
                                leader,
                                "joined the federation as a learner"
                            );
                            for (id, addr) in &members {
                                if *id != me {
                                    crate::transport::Transport::set_peer(transport, *id, addr);
                                }
                            }
                            return Ok(members);
                        }
                        MemberReply::Refused { reason } => {
                            return Err(MembershipError::Refused { reason })
                        }
                        MemberReply::Retry { reason } => {
                            tried.push(format!("seed {seed}: {reason}"))
                        }
                        MemberReply::Left { .. } => {
                            tried.push(format!("seed {seed}: unexpected answer"))
                        }
                    }
                }
                Err(e) => tried.push(format!("seed {seed}: {e}")),
            }
        }
        if Instant::now() >= deadline {
            let tried = tried.join("; ");
            return Err(if answered {
                MembershipError::Unavailable { reason: tried }
            } else {
                MembershipError::NoSeedReachable { tried }
            });
        }
        tracing::warn!(node = me, attempts = %tried.join("; "), "joining the federation: no seed accepted yet; retrying");
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        let r = MemberRequest::Join {
            node: 7,
            name: "north".into(),
            address: "127.0.0.1:15031".into(),
            forwarded: false,
        };
        let back: MemberRequest = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(back.forwarded().is_forwarded());
        assert!(matches!(decode_reply(b""), MemberReply::Retry { .. }));
        assert!(matches!(
            decode_reply(b"nonsense"),
            MemberReply::Refused { .. }
        ));
    }
}
