//! Client requests and timers: proposals (retried across leader changes,
//! deduplicated by id in the state machine), ReadIndex reads, membership
//! changes, status, and the leader's lease expiry proposals.

use super::{Core, PendingConf, PendingRead, PendingWrite};
use crate::command::{Command, ProposalId};
use crate::handle::{FederationError, NodeStatus, PeerStatus, Request, Role};
use raft::StateRole;
use tokio::time::Instant;

impl Core {
    pub(super) fn on_request(&mut self, req: Request) {
        let now = Instant::now();
        let deadline = now + self.cfg.request_timeout;
        let req = match req {
            Request::Propose { reply, .. } if self.cfg.witness => {
                return self.refuse_witness(reply);
            }
            Request::Read { reply } if self.cfg.witness => return self.refuse_witness(reply),
            Request::ConfChange { reply, .. } if self.cfg.witness => {
                return self.refuse_witness(reply);
            }
            other => other,
        };
        match req {
            Request::Propose { cmd, reply } => {
                let data = match cmd.encode() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return;
                    }
                };
                if data.len() > self.cfg.max_entry_bytes {
                    self.metrics
                        .proposals_failed
                        .with_label_values(&["too_large"])
                        .inc();
                    let _ = reply.send(Err(FederationError::TooLarge {
                        bytes: data.len(),
                        max: self.cfg.max_entry_bytes,
                    }));
                    return;
                }
                self.metrics.proposals.inc();
                let id = self.next_id();
                self.writes.insert(
                    id,
                    PendingWrite {
                        data,
                        reply: Some(reply),
                        started: now,
                        deadline,
                        proposed_term: 0,
                        proposed_at: None,
                    },
                );
                self.try_propose(id, now);
            }
            Request::Read { reply } => {
                let id = self.next_id();
                self.reads.insert(
                    id.seq,
                    PendingRead {
                        reply,
                        started: now,
                        deadline,
                        issued_at: None,
                    },
                );
                self.issue_read(id.seq, now);
            }
            Request::Events { from, max, reply } => {
                let _ = reply.send(self.registry.events_since(from, max));
            }
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::Image { reply } => {
                // The caller may compare it with `snapshot_stale`.
                self.publish_view_now();
                let _ = reply.send(self.registry.to_image());
            }
            Request::ConfChange { cc, addrs, reply } => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(FederationError::ConfChange(format!(
                        "node {} is not the leader (leader: {}); send membership changes to the leader",
                        self.cfg.id, self.raw.raft.leader_id
                    ))));
                    return;
                }
                let id = self.next_id();
                let ctx = ConfContext { id, addrs };
                let ctx = match serde_json::to_vec(&ctx) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = reply.send(Err(FederationError::ConfChange(e.to_string())));
                        return;
                    }
                };
                match self.raw.propose_conf_change(ctx, cc) {
                    Ok(()) => {
                        self.confs.insert(
                            id,
                            PendingConf {
                                reply,
                                started: now,
                                deadline,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(FederationError::ConfChange(format!(
                            "{e} (a previous membership change may still be in progress)"
                        ))));
                    }
                }
            }
            Request::TransferLeader { to } => self.raw.transfer_leader(to),
        }
    }

    fn refuse_witness<T>(&self, reply: crate::handle::Reply<T>) {
        let _ = reply.send(Err(FederationError::Witness { node: self.cfg.id }));
    }

    /// A witness that won an election (it alone had the newest entries)
    /// hands leadership to the most caught-up replica; raft-rs brings that
    /// replica up to date from the witness's log first.
    fn witness_hand_over(&mut self) {
        if !self.cfg.witness
            || self.raw.raft.state != StateRole::Leader
            || self.raw.raft.lead_transferee.is_some()
        {
            return;
        }
        let me = self.cfg.id;
        let target = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && self.conf_state.voters.contains(id))
            .max_by_key(|(id, pr)| (pr.recent_active, pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id);
        if let Some(to) = target {
            tracing::info!(
                node = me,
                to,
                "witness is leader; handing leadership to a replica"
            );
            self.raw.transfer_leader(to);
        }
    }

    fn try_propose(&mut self, id: ProposalId, now: Instant) {
        let leader = self.raw.raft.leader_id;
        let term = self.raw.raft.term;
        let Some(w) = self.writes.get_mut(&id) else {
            return;
        };
        if leader == raft::INVALID_ID {
            return;
        }
        // raft-rs forwards a follower's proposal to the leader; if that
        // message is lost the timer below proposes again (same id).
        if self.raw.propose(id.encode(), w.data.clone()).is_ok() {
            w.proposed_term = term;
            w.proposed_at = Some(now);
        }
    }

    fn issue_read(&mut self, seq: u64, now: Instant) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        if let Some(r) = self.reads.get_mut(&seq) {
            r.issued_at = Some(now);
            self.raw.read_index(seq.to_be_bytes().to_vec());
        }
    }

    fn timeout_error(&self, started: Instant) -> FederationError {
        let waited = started.elapsed();
        if self.raw.raft.leader_id == raft::INVALID_ID {
            FederationError::NoLeader {
                node: self.cfg.id,
                waited,
            }
        } else {
            FederationError::NoQuorum {
                leader: self.raw.raft.leader_id,
                term: self.raw.raft.term,
                waited,
            }
        }
    }

    pub(super) fn on_tick(&mut self) {
        let now = Instant::now();
        self.witness_hand_over();
        let retry_after = self.cfg.election_timeout();
        let term = self.raw.raft.term;

        let expired: Vec<ProposalId> = self
            .writes
            .iter()
            .filter(|(_, w)| now >= w.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(w) = self.writes.remove(&id) {
                let err = self.timeout_error(w.started);
                self.metrics
                    .proposals_failed
                    .with_label_values(&[reason(&err)])
                    .inc();
                tracing::debug!(error = %err, "proposal timed out");
                if let Some(r) = w.reply {
                    let _ = r.send(Err(err));
                }
            }
        }
        let retry: Vec<ProposalId> = self
            .writes
            .iter()
            .filter(|(_, w)| {
                w.proposed_term != term || w.proposed_at.is_none_or(|t| now >= t + retry_after)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in retry {
            self.try_propose(id, now);
        }

        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            if let Some(r) = self.reads.remove(&seq) {
                let err = self.timeout_error(r.started);
                let _ = r.reply.send(Err(err));
            }
        }
        let reissue: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.issued_at.is_none_or(|t| now >= t + retry_after))
            .map(|(s, _)| *s)
            .collect();
        for seq in reissue {
            self.issue_read(seq, now);
        }
        let (late, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|(_, r)| now >= r.deadline);
        self.confirmed_reads = keep;
        for (_, r) in late {
            let err = self.timeout_error(r.started);
            let _ = r.reply.send(Err(err));
        }

        let expired: Vec<ProposalId> = self
            .confs
            .iter()
            .filter(|(_, c)| now >= c.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(c) = self.confs.remove(&id) {
                let err = self.timeout_error(c.started);
                let _ = c.reply.send(Err(err));
            }
        }

        // A transport that never reports would pin the peer in snapshot state
        // forever; give up after the configured bound so the leader retries.
        let stuck: Vec<u64> = self
            .snapshots_in_flight
            .iter()
            .filter(|(_, at)| now >= **at + self.cfg.snapshot_timeout)
            .map(|(p, _)| *p)
            .collect();
        for peer in stuck {
            self.snapshots_in_flight.remove(&peer);
            tracing::warn!(peer, timeout = ?self.cfg.snapshot_timeout, "no delivery report for a snapshot; marking it failed");
            self.raw
                .report_snapshot(peer, raft::SnapshotStatus::Failure);
        }

        for (cluster, renewed_at) in self.leases.due(now) {
            tracing::info!(cluster = %cluster, "lease deadline passed; proposing expiry");
            let cmd = Command::ExpireLease {
                cluster,
                renewed_at,
            };
            match cmd.encode() {
                Ok(data) => {
                    let id = self.next_id();
                    if let Err(e) = self.raw.propose(id.encode(), data) {
                        tracing::warn!(error = %e, "cannot propose lease expiry");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode lease expiry"),
            }
        }
    }

    pub(super) fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        };
        let last_index = raft.raft_log.last_index();
        let mut peers = Vec::new();
        if raft.state == StateRole::Leader {
            let learners: std::collections::HashSet<u64> =
                self.conf_state.learners.iter().copied().collect();
            for (id, pr) in raft.prs().iter() {
                if *id == self.cfg.id {
                    continue;
                }
                peers.push(PeerStatus {
                    id: *id,
                    match_index: pr.matched,
                    next_index: pr.next_idx,
                    lag: last_index.saturating_sub(pr.matched),
                    learner: learners.contains(id),
                    state: format!("{:?}", pr.state),
                });
            }
            peers.sort_by_key(|p| p.id);
        }
        let mut voters = self.conf_state.voters.clone();
        voters.sort_unstable();
        let mut learners = self.conf_state.learners.clone();
        learners.sort_unstable();
        NodeStatus {
            id: self.cfg.id,
            role,
            leader: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.registry.applied_index(),
            last_index,
            first_index: self.raw.store().truncated_index() + 1,
            snapshot_index: self.raw.store().latest_snapshot().get_metadata().index,
            revision: self.registry.revision(),
            voters,
            learners,
            peers,
        }
    }
}

fn reason(e: &FederationError) -> &'static str {
    match e {
        FederationError::NoLeader { .. } => "no_leader",
        FederationError::NoQuorum { .. } => "no_quorum",
        FederationError::Rejected(_) => "rejected",
        _ => "other",
    }
}

/// Carried in a membership change entry's context.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ConfContext {
    pub id: ProposalId,
    /// Where added members listen, for every member's transport.
    pub addrs: Vec<(u64, String)>,
}
