//! In-process transport with injectable faults (drop, delay, duplicate,
//! partition), in the spirit of raft-rs's harness network. Used by tests and
//! by the multi-cluster harness.

use super::{Transport, INBOUND_QUEUE};
use raft::eraftpb::{Message, MessageType};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What the network currently does to messages.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability in [0, 1] of dropping any message.
    pub drop_rate: f64,
    /// Probability in [0, 1] of delivering a message twice.
    pub duplicate_rate: f64,
    /// Random delay per message in [min, max]; reorders messages too.
    pub delay: Option<(Duration, Duration)>,
    /// Directed links (from, to) that drop everything.
    pub cut: HashSet<(u64, u64)>,
}

#[derive(Debug, Default)]
pub struct NetStats {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
}

/// The shared in-memory network; cheap to clone.
#[derive(Clone)]
pub struct MemNetwork {
    routes: Arc<watch::Sender<HashMap<u64, mpsc::Sender<Message>>>>,
    faults: Arc<watch::Sender<Faults>>,
    stats: Arc<NetStats>,
}

impl Default for MemNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl MemNetwork {
    pub fn new() -> MemNetwork {
        MemNetwork {
            routes: Arc::new(watch::channel(HashMap::new()).0),
            faults: Arc::new(watch::channel(Faults::default()).0),
            stats: Arc::new(NetStats::default()),
        }
    }

    /// Attaches node `id` (replacing any previous attachment, e.g. after a
    /// restart) and returns its transport and inbound queue.
    pub fn join(&self, id: u64) -> (Arc<MemTransport>, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        self.routes.send_modify(|r| {
            r.insert(id, tx);
        });
        let transport = MemTransport {
            routes: self.routes.subscribe(),
            faults: self.faults.subscribe(),
            stats: self.stats.clone(),
        };
        (Arc::new(transport), rx)
    }

    pub fn leave(&self, id: u64) {
        self.routes.send_modify(|r| {
            r.remove(&id);
        });
    }

    pub fn set_faults(&self, f: Faults) {
        self.faults.send_replace(f);
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(f);
    }

    /// Cuts every link between different groups; links inside a group stay.
    pub fn partition(&self, groups: &[&[u64]]) {
        self.faults.send_modify(|f| {
            f.cut.clear();
            for (i, a) in groups.iter().enumerate() {
                for (j, b) in groups.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    for x in a.iter() {
                        for y in b.iter() {
                            f.cut.insert((*x, *y));
                        }
                    }
                }
            }
        });
    }

    /// Cuts `id` off from everyone in `others`, both directions.
    pub fn isolate(&self, id: u64, others: &[u64]) {
        self.faults.send_modify(|f| {
            for o in others {
                f.cut.insert((id, *o));
                f.cut.insert((*o, id));
            }
        });
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.faults.send_replace(Faults::default());
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }
}

pub struct MemTransport {
    routes: watch::Receiver<HashMap<u64, mpsc::Sender<Message>>>,
    faults: watch::Receiver<Faults>,
    stats: Arc<NetStats>,
}

impl MemTransport {
    fn deliver(&self, to: &mpsc::Sender<Message>, msg: Message, delay: Option<Duration>) {
        // Snapshot delivery is reported back to the sender, as the QUIC
        // transport does once the receiver acknowledged it.
        let report = (msg.get_msg_type() == MessageType::MsgSnapshot)
            .then(|| {
                self.routes
                    .borrow()
                    .get(&msg.from)
                    .cloned()
                    .map(|tx| (tx, msg.from, msg.to))
            })
            .flatten();
        let finish = move |stats: &NetStats, ok: bool| {
            count(stats, ok);
            if let Some((tx, from, peer)) = &report {
                let _ = tx.try_send(snap_status(*from, *peer, ok));
            }
        };
        match delay {
            Some(d) => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let to = to.clone();
                    let stats = self.stats.clone();
                    rt.spawn(async move {
                        tokio::time::sleep(d).await;
                        let ok = to.try_send(msg).is_ok();
                        finish(&stats, ok);
                    });
                }
                // Outside a runtime there is nothing to delay on: deliver now.
                Err(_) => {
                    let ok = to.try_send(msg).is_ok();
                    finish(&self.stats, ok);
                }
            },
            None => {
                let ok = to.try_send(msg).is_ok();
                finish(&self.stats, ok);
            }
        }
    }

    /// Counts a dropped message; a dropped snapshot is reported as failed.
    fn dropped(&self, msg: &Message) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            if let Some(tx) = self.routes.borrow().get(&msg.from) {
                let _ = tx.try_send(snap_status(msg.from, msg.to, false));
            }
        }
    }
}

fn snap_status(me: u64, peer: u64, ok: bool) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapStatus);
    m.from = peer;
    m.to = me;
    m.reject = !ok;
    m
}

fn count(stats: &NetStats, ok: bool) {
    if ok {
        stats.delivered.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl Transport for MemTransport {
    fn send(&self, msg: Message) {
        let (to, delay, dup) = {
            let faults = self.faults.borrow();
            if faults.cut.contains(&(msg.from, msg.to)) {
                self.dropped(&msg);
                return;
            }
            let mut rng = rand::rng();
            if faults.drop_rate > 0.0 && rng.random_bool(faults.drop_rate.min(1.0)) {
                self.dropped(&msg);
                return;
            }
            let dup =
                faults.duplicate_rate > 0.0 && rng.random_bool(faults.duplicate_rate.min(1.0));
            let delay = faults.delay.map(|(lo, hi)| {
                if hi > lo {
                    rng.random_range(lo..=hi)
                } else {
                    lo
                }
            });
            let Some(to) = self.routes.borrow().get(&msg.to).cloned() else {
                drop(faults);
                self.dropped(&msg);
                return;
            };
            (to, delay, dup)
        };
        if dup {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
            self.deliver(&to, msg.clone(), delay);
        }
        self.deliver(&to, msg, delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.from = from;
        m.to = to;
        m
    }

    #[tokio::test]
    async fn partition_drops_across_groups_only() {
        let net = MemNetwork::new();
        let (t1, _r1) = net.join(1);
        let (_t2, mut r2) = net.join(2);
        let (_t3, mut r3) = net.join(3);
        net.partition(&[&[1, 2], &[3]]);
        t1.send(msg(1, 2));
        t1.send(msg(1, 3));
        assert_eq!(r2.recv().await.unwrap().to, 2);
        assert!(r3.try_recv().is_err());
        net.heal();
        t1.send(msg(1, 3));
        assert_eq!(r3.recv().await.unwrap().from, 1);
    }

    #[tokio::test]
    async fn duplicate_and_delay() {
        let net = MemNetwork::new();
        let (t1, _r1) = net.join(1);
        let (_t2, mut r2) = net.join(2);
        net.set_faults(Faults {
            duplicate_rate: 1.0,
            delay: Some((Duration::from_millis(1), Duration::from_millis(5))),
            ..Faults::default()
        });
        t1.send(msg(1, 2));
        assert!(r2.recv().await.is_some());
        assert!(r2.recv().await.is_some());
        net.set_faults(Faults {
            drop_rate: 1.0,
            ..Faults::default()
        });
        t1.send(msg(1, 2));
        assert_eq!(net.stats().dropped.load(Ordering::Relaxed), 1);
    }
}
