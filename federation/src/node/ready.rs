//! Ready handling in the order raft-rs requires: send leader messages (a
//! leader replicates before its own fsync), install a received snapshot,
//! persist entries and hard state (fsync), send the messages that depend on
//! them, then apply committed entries and advance.

use super::requests::ConfContext;
use super::{Core, NodeError};
use crate::command::{Command, ProposalId};
use crate::handle::FederationError;
use crate::state::{Applied, MembersOnly, Registry, StateImage};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::StateRole;
use tokio::time::Instant;

type WriteReply = (crate::handle::Reply<u64>, Result<u64, FederationError>);

impl Core {
    pub(super) fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }
        let msgs = ready.take_messages();
        self.send(msgs);
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(snap)?;
        }
        let sync = ready.must_sync();
        self.raw
            .mut_store()
            .persist(ready.entries(), ready.hs(), sync)?;
        // Acknowledge (and vote) before applying: the leader's commit waits
        // for this, while the committed entries of this Ready were persisted
        // by earlier ones (raft-rs hands out only persisted entries), so
        // applying them later is as safe and keeps apply time off the
        // commit path.
        let msgs = ready.take_persisted_messages();
        self.send(msgs);
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        let read_states = ready.take_read_states();
        for rs in read_states {
            self.on_read_state(rs.index, &rs.request_ctx);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        let msgs = light.take_messages();
        self.send(msgs);
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();
        self.maybe_snapshot()?;
        self.metrics.term.set(self.raw.raft.term as i64);
        self.metrics
            .commit_index
            .set(self.raw.raft.raft_log.committed as i64);
        Ok(())
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        if leader != self.leader {
            if leader != raft::INVALID_ID {
                self.metrics.leader_changes.inc();
            }
            tracing::info!(
                node = self.cfg.id,
                leader,
                term = self.raw.raft.term,
                "federation leader changed"
            );
            self.leader = leader;
        }
        let leading = role == StateRole::Leader;
        self.metrics.is_leader.set(i64::from(leading));
        if leading {
            self.leases
                .become_leader(Instant::now(), &self.registry.view());
        } else {
            self.leases.step_down();
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.metrics.snapshots_sent.inc();
                // The transport reports delivery (MsgSnapStatus); until then
                // raft-rs keeps the peer in snapshot state and sends nothing
                // else to it, so a large snapshot is not sent over and over.
                self.snapshots_in_flight.insert(m.to, Instant::now());
            }
            self.transport.send(m);
        }
    }

    fn install_snapshot(&mut self, mut snap: Snapshot) -> Result<(), NodeError> {
        let index = snap.get_metadata().index;
        let image = if self.cfg.witness {
            // Keep membership only; the registry data is not stored.
            let members: MembersOnly =
                serde_json::from_slice(&snap.data).map_err(NodeError::Image)?;
            let image = StateImage {
                applied_index: index,
                members: members.members,
                witness: true,
                ..StateImage::default()
            };
            snap.data = serde_json::to_vec(&image).map_err(NodeError::Image)?.into();
            image
        } else {
            let image: StateImage = serde_json::from_slice(&snap.data).map_err(NodeError::Image)?;
            if image.witness {
                return Err(NodeError::WitnessSnapshot);
            }
            image
        };
        self.conf_state = snap.get_metadata().get_conf_state().clone();
        self.raw.mut_store().apply_snapshot(snap)?;
        self.registry = Registry::from_image(image, self.cfg.history_limit);
        self.registry.set_applied_index(index);
        self.announce_members();
        self.metrics.snapshots_installed.inc();
        tracing::info!(
            node = self.cfg.id,
            index,
            "installed registry snapshot from the leader"
        );
        self.publish_view();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let count = entries.len() as u64;
        let mut replies = Vec::new();
        for e in entries {
            if e.index <= self.registry.applied_index() {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(e, &mut replies),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf(e)?,
            }
        }
        self.metrics.committed_entries.inc_by(count);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let now = Instant::now();
        let view = self.registry.view();
        self.leases.observe(now, &view);
        let applied = self.registry.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.confirmed_reads = waiting;
        if ready.is_empty() {
            // A writer's own change reaches `snapshot_stale` and watches
            // within `view_publish_interval`; `read_linearizable` is the
            // way to read one's writes.
            self.publish_view();
        } else {
            // A linearizable reader then also finds that state (or newer)
            // in this node's published view.
            self.publish_view_now();
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        for (_, r) in ready {
            let _ = r.reply.send(Ok(view.clone()));
        }
        Ok(())
    }

    /// Applies one registry command; the answer to a local writer is
    /// queued in `replies` (sent once the view is published).
    fn apply_normal(&mut self, e: Entry, replies: &mut Vec<WriteReply>) {
        if e.data.is_empty() || self.cfg.witness {
            // The empty entry a new leader appends, or a witness, which
            // keeps no registry.
            self.registry.set_applied_index(e.index);
            return;
        }
        let id = ProposalId::decode(&e.context);
        let outcome = match Command::decode(e.index, &e.data) {
            Ok(cmd) => Ok(self.registry.apply(e.index, id, cmd)),
            Err(err) => {
                // Deterministic on every node: skip the entry, keep going.
                tracing::error!(error = %err, "skipping undecodable log entry");
                self.registry.set_applied_index(e.index);
                Err(err)
            }
        };
        let Some(id) = id.filter(|id| id.node == self.cfg.id && id.epoch == self.epoch) else {
            return;
        };
        let Some(w) = self.writes.remove(&id) else {
            return;
        };
        let result = match outcome {
            Ok(Applied::Changed(rev) | Applied::Unchanged(rev) | Applied::Duplicate(rev)) => {
                Ok(rev)
            }
            Ok(Applied::Rejected(r)) => {
                self.metrics
                    .proposals_failed
                    .with_label_values(&["rejected"])
                    .inc();
                Err(FederationError::Rejected(r))
            }
            Err(e) => Err(FederationError::Command(e)),
        };
        if let Some(reply) = w.reply {
            replies.push((reply, result));
        }
    }

    fn apply_conf(&mut self, e: Entry) -> Result<(), NodeError> {
        let index = e.index;
        let ctx: Option<ConfContext> = serde_json::from_slice(&e.context).ok();
        let cc: Result<ConfChangeV2, protobuf::ProtobufError> = match e.get_entry_type() {
            EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data).map(v1_to_v2),
            _ => ConfChangeV2::parse_from_bytes(&e.data),
        };
        let cc_for_members = cc.as_ref().ok().cloned();
        let result = match cc {
            Err(err) => Err(format!(
                "undecodable membership change at index {index}: {err}"
            )),
            // Already in the persisted configuration (replay after restart).
            Ok(_) if index <= self.raw.store().conf_index() => Ok(()),
            Ok(cc) => match self.raw.apply_conf_change(&cc) {
                Ok(cs) => {
                    self.raw.mut_store().set_conf_state(cs.clone(), index)?;
                    tracing::info!(node = self.cfg.id, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
                    self.conf_state = cs;
                    Ok(())
                }
                Err(err) => Err(format!(
                    "membership change at index {index} not applicable: {err}"
                )),
            },
        };
        if let Err(msg) = &result {
            tracing::error!(node = self.cfg.id, "{msg}");
        }
        self.registry.set_applied_index(index);
        if let Some(cc) = &cc_for_members {
            for ch in cc.get_changes() {
                if ch.get_change_type() == raft::eraftpb::ConfChangeType::RemoveNode {
                    self.registry.set_member(ch.node_id, None);
                }
            }
        }
        if let Some(ctx) = ctx {
            for (id, addr) in &ctx.addrs {
                self.registry.set_member(*id, Some(addr.clone()));
                if *id != self.cfg.id {
                    self.transport.set_peer(*id, addr);
                }
            }
            if let Some(p) = self.confs.remove(&ctx.id) {
                let _ = p.reply.send(result.map_err(FederationError::ConfChange));
            }
        }
        Ok(())
    }

    /// Tells the transport where every run-time member lives.
    pub(super) fn announce_members(&self) {
        for (id, addr) in &self.registry.view().members {
            if *id != self.cfg.id {
                self.transport.set_peer(*id, addr);
            }
        }
    }

    fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Ok(seq) = <[u8; 8]>::try_from(ctx).map(u64::from_be_bytes) else {
            return;
        };
        let Some(read) = self.reads.remove(&seq) else {
            return;
        };
        if self.registry.applied_index() >= index {
            self.publish_view_now();
            let _ = read.reply.send(Ok(self.registry.view()));
        } else {
            self.confirmed_reads.push((index, read));
        }
    }

    /// Publishes the view to watchers, at most once per
    /// `view_publish_interval` (see there); a later change is published
    /// when the interval has passed (`publish_due`).
    fn publish_view(&mut self) {
        let view = self.registry.view();
        self.metrics.applied_index.set(view.applied_index as i64);
        self.metrics.registry_revision.set(view.revision as i64);
        if self.publish_due.is_some() || !self.registry.is_changed() {
            return;
        }
        let due = self.published_at + self.cfg.view_publish_interval;
        if Instant::now() >= due {
            self.publish_view_now();
        } else {
            self.publish_due = Some(due);
        }
    }

    pub(super) fn publish_view_now(&mut self) {
        self.publish_due = None;
        let view = self.registry.view();
        if self.registry.take_changed() {
            self.published_at = Instant::now();
            // The replaced view is freed here unless a reader still holds it.
            drop(self.view_tx.send_replace(view));
        }
    }

    /// Takes a snapshot of the applied state and compacts the log once
    /// `snapshot_every` entries were applied since the last one.
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        let applied = self.registry.applied_index();
        let last = self.raw.store().latest_snapshot().get_metadata().index;
        let wanted = self.raw.store().take_snapshot_request();
        let due = applied >= last + self.cfg.snapshot_every.max(1);
        if !(due || wanted && applied > 0) {
            return Ok(());
        }
        let term = raft::Storage::term(self.raw.store(), applied)?;
        let mut image = self.registry.to_image();
        image.witness = self.cfg.witness;
        let data = serde_json::to_vec(&image).map_err(NodeError::Image)?;
        let mut snap = Snapshot::default();
        snap.data = data.into();
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let compact_to = applied.saturating_sub(self.cfg.keep_entries);
        self.raw
            .mut_store()
            .install_local_snapshot(snap, compact_to)?;
        self.metrics.snapshots_taken.inc();
        tracing::debug!(
            node = self.cfg.id,
            applied,
            compact_to,
            "took registry snapshot and compacted the log"
        );
        Ok(())
    }
}

fn v1_to_v2(c: ConfChange) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(c.get_change_type());
    single.node_id = c.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.mut_changes().push(single);
    v2
}
