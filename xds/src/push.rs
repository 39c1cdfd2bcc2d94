//! The push pipeline's front half: change notices in, debounced pushes out.
//!
//! The control plane calls [`Pusher::push`] whenever its input changes. Notices
//! are merged in a `watch` (never queued, so a burst of changes costs nothing),
//! and one debounce task publishes a [`PushLog`] once the input has been quiet
//! for the debounce interval (or the maximum delay has passed). Connection
//! tasks read the log and work out what changed since they last looked, so a
//! connection that was busy with a slow client simply catches up with the
//! latest state.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::generator::Names;
use crate::metrics::Metrics;
use crate::stream::Subscription;
use crate::types::TypeUrl;

/// What changed in the control plane's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushScope {
    /// Anything may have changed: recompute every type.
    Full,
    /// Only these types may have changed (e.g. `Secret` after a trust bundle rotation).
    Types(BTreeSet<TypeUrl>),
    /// Only the endpoints (EDS) of these cluster names changed.
    Endpoints(BTreeSet<String>),
}

/// The union of several scopes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affected {
    pub full: bool,
    pub types: BTreeSet<TypeUrl>,
    pub endpoints: BTreeSet<String>,
}

impl Affected {
    pub fn full() -> Affected {
        Affected {
            full: true,
            ..Affected::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.full && self.types.is_empty() && self.endpoints.is_empty()
    }

    pub fn add(&mut self, scope: &PushScope) {
        if self.full {
            return;
        }
        match scope {
            PushScope::Full => *self = Affected::full(),
            PushScope::Types(t) => self.types.extend(t.iter().copied()),
            PushScope::Endpoints(e) => self.endpoints.extend(e.iter().cloned()),
        }
    }

    fn merge(&mut self, other: &Affected) {
        if other.full {
            *self = Affected::full();
        } else if !self.full {
            self.types.extend(other.types.iter().copied());
            self.endpoints.extend(other.endpoints.iter().cloned());
        }
    }

    /// Which of `subscribed` must be regenerated for type `t`: `None` when
    /// the type is untouched. For an endpoint-only change this narrows to the
    /// changed clusters the proxy actually watches.
    pub(crate) fn names_for(&self, t: TypeUrl, subscribed: &Subscription) -> Option<Names> {
        if self.full || self.types.contains(&t) {
            return Some(subscribed.names());
        }
        if t != TypeUrl::ClusterLoadAssignment || self.endpoints.is_empty() {
            return None;
        }
        let hit: BTreeSet<Arc<str>> = match subscribed.wildcard {
            true => self
                .endpoints
                .iter()
                .map(|n| Arc::from(n.as_str()))
                .collect(),
            false => self
                .endpoints
                .iter()
                .filter_map(|n| subscribed.names.get(n.as_str()).cloned())
                .collect(),
        };
        (!hit.is_empty()).then_some(Names::Some(Arc::new(hit)))
    }
}

/// A notice that has not been published yet.
#[derive(Debug, Default)]
struct Pending {
    version: u64,
    affected: Affected,
    first_at: Option<Instant>,
}

/// The handle the control plane uses to announce input changes.
///
/// Contract: first make the new input visible to the [`crate::Generator`],
/// then call [`Pusher::push`]. Streams regenerate after the push is
/// published, so they always see input at least as new as the push; a stream
/// that happens to generate in between just sees the new input early.
/// Dropping every clone stops the debounce task after it publishes what was
/// pending; streams keep serving their last state.
#[derive(Clone, Debug)]
pub struct Pusher {
    tx: Arc<watch::Sender<Pending>>,
}

impl Pusher {
    /// Announces that the input reached `version` and what changed. Cheap
    /// and non-blocking; bursts are merged.
    pub fn push(&self, version: u64, scope: PushScope) {
        self.tx.send_modify(|p| {
            p.version = p.version.max(version);
            p.affected.add(&scope);
            p.first_at.get_or_insert_with(Instant::now);
        });
    }
}

/// How many past pushes a connection can catch up on before it falls back to
/// a full recomputation.
const HISTORY: usize = 256;

/// The published push history. Connections keep the `seq` they last handled.
#[derive(Debug, Default)]
pub struct PushLog {
    /// Increases by one per published push; 0 means "nothing published yet".
    pub seq: u64,
    /// The control plane's input version of the latest push.
    pub version: u64,
    /// When the first change in the latest push was announced.
    pub triggered_at: Option<Instant>,
    entries: VecDeque<(u64, Affected)>,
}

impl PushLog {
    /// What changed after `seen`; `None` if nothing did.
    pub fn since(&self, seen: u64) -> Option<Affected> {
        if seen >= self.seq {
            return None;
        }
        let oldest = self.entries.front().map_or(self.seq, |(s, _)| *s);
        if seen + 1 < oldest {
            return Some(Affected::full());
        }
        let mut out = Affected::default();
        for (_, a) in self.entries.iter().filter(|(s, _)| *s > seen) {
            out.merge(a);
        }
        Some(out)
    }

    fn publish(&self, version: u64, affected: Affected, triggered_at: Option<Instant>) -> PushLog {
        let mut entries = self.entries.clone();
        let seq = self.seq + 1;
        entries.push_back((seq, affected));
        while entries.len() > HISTORY {
            entries.pop_front();
        }
        PushLog {
            seq,
            version,
            triggered_at,
            entries,
        }
    }
}

/// Debounce settings.
#[derive(Clone, Copy, Debug)]
pub struct DebounceConfig {
    /// Publish once the input has been quiet this long (default 100 ms).
    pub quiet: Duration,
    /// Publish at the latest this long after the first unpublished change
    /// (default 1 s), so a constant trickle of changes still gets pushed.
    pub max_delay: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Creates the pusher and spawns the debounce task (needs a tokio runtime).
/// The task ends when every [`Pusher`] clone is dropped, after publishing
/// what was still pending; the last published log stays valid.
pub(crate) fn spawn_debouncer(
    config: DebounceConfig,
    published: watch::Sender<Arc<PushLog>>,
    metrics: Option<Metrics>,
) -> Pusher {
    let (tx, rx) = watch::channel(Pending::default());
    let tx = Arc::new(tx);
    tokio::spawn(debounce(
        config,
        Arc::downgrade(&tx),
        rx,
        published,
        metrics,
    ));
    Pusher { tx }
}

async fn debounce(
    config: DebounceConfig,
    pending: Weak<watch::Sender<Pending>>,
    mut rx: watch::Receiver<Pending>,
    published: watch::Sender<Arc<PushLog>>,
    metrics: Option<Metrics>,
) {
    loop {
        let mut pushers_gone = rx.changed().await.is_err();
        let first_at = rx.borrow_and_update().first_at;
        let Some(first_at) = first_at else {
            if pushers_gone {
                return;
            }
            continue;
        };
        let deadline = first_at + config.max_delay;
        let mut quiet_until = Instant::now() + config.quiet;
        while !pushers_gone {
            tokio::select! {
                _ = tokio::time::sleep_until(quiet_until.min(deadline)) => break,
                changed = rx.changed() => {
                    pushers_gone = changed.is_err();
                    rx.borrow_and_update();
                    quiet_until = Instant::now() + config.quiet;
                }
            }
        }
        let taken = match pending.upgrade() {
            Some(tx) => {
                let mut taken = Pending::default();
                // Returning false: taking is not a change worth waking us for.
                tx.send_if_modified(|p| {
                    taken = std::mem::take(p);
                    p.version = taken.version;
                    false
                });
                taken
            }
            None => {
                pushers_gone = true;
                let last = rx.borrow();
                Pending {
                    version: last.version,
                    affected: last.affected.clone(),
                    first_at: last.first_at,
                }
            }
        };
        if !taken.affected.is_empty() {
            if let Some(m) = &metrics {
                let a = &taken.affected;
                if a.full {
                    m.published("full");
                } else {
                    if !a.types.is_empty() {
                        m.published("types");
                    }
                    if !a.endpoints.is_empty() {
                        m.published("endpoints");
                    }
                }
            }
            published.send_modify(|log| {
                *log = Arc::new(log.publish(taken.version, taken.affected, taken.first_at));
            });
        }
        if pushers_gone {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
