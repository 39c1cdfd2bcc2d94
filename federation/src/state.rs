//! The replicated state machine: applies committed commands in log order,
//! bumps the revision on every change and keeps a bounded event history for
//! the watch API. Deterministic: the same log gives the same state and the
//! same revisions on every node.

use crate::command::{Command, ProposalId, PublishDiff};
use crate::model::{ClusterInfo, ClusterService, Health, ServiceKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

/// How many proposal ids the state machine remembers to drop a retried
/// proposal that already committed.
const DEDUP_WINDOW: usize = 4096;

/// One cluster's services in a [`RegistrySnapshot`]. A persistent map: the
/// node hands a new view to watchers at most every few milliseconds while
/// commands keep changing it, and cloning a `BTreeMap` of every service on
/// each hand-over cost more than the commit itself (it was the single-writer
/// latency tail of the registry benchmark).
pub type ServiceMap = imbl::OrdMap<ServiceKey, ClusterService>;

/// Lease of one cluster as the log decided it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    /// Log index of the last renewal (or registration).
    pub renewed_at: u64,
    pub expired: bool,
}

/// A consistent, immutable view of the registry at one revision: what the
/// translator reads. Endpoints of a cluster whose lease expired carry
/// `Health::Unavailable` here; their published health returns with the lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySnapshot {
    pub revision: u64,
    /// Raft index this view includes.
    pub applied_index: u64,
    pub clusters: BTreeMap<String, ClusterInfo>,
    /// cluster id -> service -> what that cluster publishes.
    pub services: BTreeMap<String, ServiceMap>,
    pub leases: BTreeMap<String, LeaseState>,
    /// Raft peer addresses of members added at run time (from membership
    /// changes), so a restarted node can reach them without extra config.
    pub members: BTreeMap<u64, String>,
}

impl RegistrySnapshot {
    /// Every cluster's instance of one service (namespace sameness).
    pub fn instances<'a>(
        &'a self,
        key: &'a ServiceKey,
    ) -> impl Iterator<Item = &'a ClusterService> + 'a {
        self.services.values().filter_map(move |m| m.get(key))
    }

    /// Every distinct service key exported by any cluster.
    pub fn service_keys(&self) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self
            .services
            .values()
            .flat_map(|m| m.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    ClusterUpserted(ClusterInfo),
    ClusterRemoved {
        cluster: String,
    },
    /// The service as the registry now shows it (effective health).
    ServiceUpserted(ClusterService),
    ServiceRemoved {
        cluster: String,
        key: ServiceKey,
    },
    LeaseExpired {
        cluster: String,
    },
    LeaseRestored {
        cluster: String,
    },
}

/// One change. Several events may share a revision (one command, one revision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
}

/// A command the state machine refused; deterministic, so every node refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(
        "cluster `{0}` is not registered; register it before publishing or renewing its lease"
    )]
    UnknownCluster(String),
    #[error("publish for cluster `{cluster}` contains a service of cluster `{found}` ({namespace}/{name}); a cluster may only publish its own services")]
    ForeignService {
        cluster: String,
        found: String,
        namespace: String,
        name: String,
    },
    #[error("cluster id must not be empty")]
    EmptyClusterId,
}

/// What applying one entry produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Changed the registry; the new revision.
    Changed(u64),
    /// Valid but changed nothing (e.g. a renewal of a live lease); current revision.
    Unchanged(u64),
    /// Already applied under the same proposal id (a retry).
    Duplicate(u64),
    Rejected(Rejected),
}

/// Serialized form of the state machine, stored in Raft snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateImage {
    pub revision: u64,
    pub applied_index: u64,
    pub clusters: Vec<ClusterInfo>,
    /// As published (health before any lease expiry).
    pub published: Vec<ClusterService>,
    pub leases: Vec<(String, LeaseState)>,
    pub recent_proposals: Vec<ProposalId>,
    #[serde(default)]
    pub members: Vec<(u64, String)>,
    /// Taken by a witness: holds membership only, never registry data. A
    /// replica refuses to start from or install such an image.
    #[serde(default)]
    pub witness: bool,
}

/// The part of an image a witness keeps when it installs a leader's snapshot
/// (serde skips the registry data without building it).
#[derive(Debug, Default, Deserialize)]
pub struct MembersOnly {
    #[serde(default)]
    pub members: Vec<(u64, String)>,
}

#[derive(Debug)]
pub struct Registry {
    view: Arc<RegistrySnapshot>,
    published: BTreeMap<String, BTreeMap<ServiceKey, ClusterService>>,
    recent: VecDeque<ProposalId>,
    recent_set: HashSet<ProposalId>,
    history: VecDeque<Event>,
    history_limit: usize,
    /// Events with a revision <= this are no longer in `history`.
    compacted_revision: u64,
    /// The view changed since `take_changed` was last called.
    changed: bool,
}

/// The view, unshared (cloned if a reader still holds it), marked changed.
fn view_mut<'a>(
    view: &'a mut Arc<RegistrySnapshot>,
    changed: &mut bool,
) -> &'a mut RegistrySnapshot {
    *changed = true;
    Arc::make_mut(view)
}

/// The requested revision is older than the retained history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub requested: u64,
    pub compacted: u64,
}

impl Registry {
    pub fn new(history_limit: usize) -> Registry {
        Registry {
            view: Arc::new(RegistrySnapshot::default()),
            published: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted_revision: 0,
            changed: true,
        }
    }

    pub fn view(&self) -> Arc<RegistrySnapshot> {
        self.view.clone()
    }

    /// Whether the view changed since `take_changed` was last called.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// Whether the view changed since the last call (what the node
    /// publishes to watchers).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Gives the registry a private copy of the view if a reader (the
    /// published view) shares it, without marking a change. The copy costs
    /// O(registry) however it is done; the node calls this while it waits
    /// for the network rather than let the next commit pay for it before
    /// answering its writer.
    pub fn detach_view(&mut self) {
        if Arc::strong_count(&self.view) > 1 {
            Arc::make_mut(&mut self.view);
        }
    }

    pub fn revision(&self) -> u64 {
        self.view.revision
    }

    pub fn applied_index(&self) -> u64 {
        self.view.applied_index
    }

    pub fn compacted_revision(&self) -> u64 {
        self.compacted_revision
    }

    /// Records a member's peer address (from a membership change entry;
    /// `None` removes it). Deterministic: driven by the log.
    pub fn set_member(&mut self, id: u64, addr: Option<String>) {
        let view = view_mut(&mut self.view, &mut self.changed);
        match addr {
            Some(a) => view.members.insert(id, a),
            None => view.members.remove(&id),
        };
    }

    /// Records that `index` was applied without a registry command (empty
    /// entries, configuration changes).
    pub fn set_applied_index(&mut self, index: u64) {
        if index > self.view.applied_index {
            view_mut(&mut self.view, &mut self.changed).applied_index = index;
        }
    }

    /// Events with revision >= `from`, or an error when some of them were
    /// dropped from the history.
    pub fn events_since(&self, from: u64, max: usize) -> Result<Vec<Event>, Compacted> {
        if from <= self.compacted_revision && self.compacted_revision > 0 {
            return Err(Compacted {
                requested: from,
                compacted: self.compacted_revision,
            });
        }
        let start = self.history.partition_point(|e| e.revision < from);
        let mut out: Vec<Event> = Vec::new();
        for e in self.history.iter().skip(start) {
            // Never split a revision: a resumed watch continues at the next one.
            if out.len() >= max.max(1) && out.last().is_some_and(|l| l.revision != e.revision) {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    pub fn apply(&mut self, index: u64, id: Option<ProposalId>, cmd: Command) -> Applied {
        if let Some(id) = id {
            if self.recent_set.contains(&id) {
                self.set_applied_index(index);
                return Applied::Duplicate(self.revision());
            }
            self.remember(id);
        }
        let mut events = Vec::new();
        let result = self.apply_inner(index, cmd, &mut events);
        let view = view_mut(&mut self.view, &mut self.changed);
        view.applied_index = view.applied_index.max(index);
        match result {
            Err(rejected) => Applied::Rejected(rejected),
            Ok(()) if events.is_empty() => Applied::Unchanged(view.revision),
            Ok(()) => {
                view.revision += 1;
                let revision = view.revision;
                for kind in events {
                    self.history.push_back(Event { revision, kind });
                }
                while self.history.len() > self.history_limit {
                    if let Some(old) = self.history.pop_front() {
                        self.compacted_revision = self.compacted_revision.max(old.revision);
                    }
                }
                Applied::Changed(revision)
            }
        }
    }

    fn remember(&mut self, id: ProposalId) {
        self.recent.push_back(id);
        self.recent_set.insert(id);
        while self.recent.len() > DEDUP_WINDOW {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    fn apply_inner(
        &mut self,
        index: u64,
        cmd: Command,
        events: &mut Vec<EventKind>,
    ) -> Result<(), Rejected> {
        match cmd {
            Command::RegisterCluster(info) => {
                if info.id.is_empty() {
                    return Err(Rejected::EmptyClusterId);
                }
                let id = info.id.clone();
                let view = view_mut(&mut self.view, &mut self.changed);
                if view.clusters.get(&id) != Some(&info) {
                    view.clusters.insert(id.clone(), info.clone());
                    events.push(EventKind::ClusterUpserted(info));
                }
                // Registering also renews: a cluster coming back must not stay expired.
                self.renew(&id, index, events);
                Ok(())
            }
            Command::DeregisterCluster { cluster } => {
                let view = view_mut(&mut self.view, &mut self.changed);
                if view.clusters.remove(&cluster).is_none() {
                    return Ok(());
                }
                view.leases.remove(&cluster);
                if let Some(services) = view.services.remove(&cluster) {
                    for key in services.keys().cloned() {
                        events.push(EventKind::ServiceRemoved {
                            cluster: cluster.clone(),
                            key,
                        });
                    }
                }
                self.published.remove(&cluster);
                events.push(EventKind::ClusterRemoved { cluster });
                Ok(())
            }
            Command::Publish { cluster, diff } => self.publish(cluster, diff, events),
            Command::RenewLease { cluster } => {
                if !self.view.clusters.contains_key(&cluster) {
                    return Err(Rejected::UnknownCluster(cluster));
                }
                self.renew(&cluster, index, events);
                Ok(())
            }
            Command::ExpireLease {
                cluster,
                renewed_at,
            } => {
                let Some(lease) = self.view.leases.get(&cluster).copied() else {
                    return Ok(());
                };
                if lease.expired || lease.renewed_at != renewed_at {
                    // A renewal committed after the leader decided: it wins.
                    return Ok(());
                }
                let view = view_mut(&mut self.view, &mut self.changed);
                view.leases.insert(
                    cluster.clone(),
                    LeaseState {
                        renewed_at,
                        expired: true,
                    },
                );
                events.push(EventKind::LeaseExpired {
                    cluster: cluster.clone(),
                });
                self.refresh_cluster_view(&cluster, events);
                Ok(())
            }
        }
    }

    fn renew(&mut self, cluster: &str, index: u64, events: &mut Vec<EventKind>) {
        let view = view_mut(&mut self.view, &mut self.changed);
        let was_expired = view.leases.get(cluster).is_some_and(|l| l.expired);
        view.leases.insert(
            cluster.to_string(),
            LeaseState {
                renewed_at: index,
                expired: false,
            },
        );
        if was_expired {
            events.push(EventKind::LeaseRestored {
                cluster: cluster.to_string(),
            });
            self.refresh_cluster_view(cluster, events);
        }
    }

    fn publish(
        &mut self,
        cluster: String,
        diff: PublishDiff,
        events: &mut Vec<EventKind>,
    ) -> Result<(), Rejected> {
        if !self.view.clusters.contains_key(&cluster) {
            return Err(Rejected::UnknownCluster(cluster));
        }
        if let Some(bad) = diff.upserts.iter().find(|s| s.cluster != cluster) {
            return Err(Rejected::ForeignService {
                cluster,
                found: bad.cluster.clone(),
                namespace: bad.service.key.namespace.clone(),
                name: bad.service.key.name.clone(),
            });
        }
        let expired = self.view.leases.get(&cluster).is_some_and(|l| l.expired);
        let published = self.published.entry(cluster.clone()).or_default();
        let view = view_mut(&mut self.view, &mut self.changed);
        let shown = view.services.entry(cluster.clone()).or_default();
        for key in diff.removals {
            if published.remove(&key).is_some() {
                shown.remove(&key);
                events.push(EventKind::ServiceRemoved {
                    cluster: cluster.clone(),
                    key,
                });
            }
        }
        for svc in diff.upserts {
            let key = svc.service.key.clone();
            if published.get(&key) == Some(&svc) {
                continue;
            }
            let effective = effective(&svc, expired);
            published.insert(key.clone(), svc);
            shown.insert(key, effective.clone());
            events.push(EventKind::ServiceUpserted(effective));
        }
        if shown.is_empty() {
            view.services.remove(&cluster);
        }
        Ok(())
    }

    /// Recomputes the shown services of one cluster after its lease changed.
    fn refresh_cluster_view(&mut self, cluster: &str, events: &mut Vec<EventKind>) {
        let expired = self.view.leases.get(cluster).is_some_and(|l| l.expired);
        let Some(published) = self.published.get(cluster) else {
            return;
        };
        let view = view_mut(&mut self.view, &mut self.changed);
        let shown = view.services.entry(cluster.to_string()).or_default();
        for (key, svc) in published {
            let effective = effective(svc, expired);
            if shown.get(key) != Some(&effective) {
                shown.insert(key.clone(), effective.clone());
                events.push(EventKind::ServiceUpserted(effective));
            }
        }
    }

    pub fn to_image(&self) -> StateImage {
        StateImage {
            revision: self.view.revision,
            applied_index: self.view.applied_index,
            clusters: self.view.clusters.values().cloned().collect(),
            published: self
                .published
                .values()
                .flat_map(|m| m.values().cloned())
                .collect(),
            leases: self
                .view
                .leases
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            recent_proposals: self.recent.iter().copied().collect(),
            members: self
                .view
                .members
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            witness: false,
        }
    }

    /// Rebuilds the state from a snapshot image. The event history restarts
    /// empty: watchers older than the image get a compacted error.
    pub fn from_image(image: StateImage, history_limit: usize) -> Registry {
        let mut reg = Registry::new(history_limit);
        let leases: BTreeMap<String, LeaseState> = image.leases.into_iter().collect();
        let mut published: BTreeMap<String, BTreeMap<ServiceKey, ClusterService>> = BTreeMap::new();
        let mut shown: BTreeMap<String, ServiceMap> = BTreeMap::new();
        for svc in image.published {
            let expired = leases.get(&svc.cluster).is_some_and(|l| l.expired);
            shown
                .entry(svc.cluster.clone())
                .or_default()
                .insert(svc.service.key.clone(), effective(&svc, expired));
            published
                .entry(svc.cluster.clone())
                .or_default()
                .insert(svc.service.key.clone(), svc);
        }
        reg.view = Arc::new(RegistrySnapshot {
            revision: image.revision,
            applied_index: image.applied_index,
            clusters: image
                .clusters
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
            services: shown,
            leases,
            members: image.members.into_iter().collect(),
        });
        reg.published = published;
        for id in image.recent_proposals {
            reg.remember(id);
        }
        reg.compacted_revision = image.revision;
        reg
    }
}

fn effective(svc: &ClusterService, expired: bool) -> ClusterService {
    let mut out = svc.clone();
    if expired {
        for ep in &mut out.endpoints {
            ep.health = Health::Unavailable;
        }
    }
    out
}

#[cfg(test)]
mod tests;
