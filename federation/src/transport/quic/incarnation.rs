//! Which run of each peer process this node last heard from.
//!
//! A peer killed with SIGKILL sends no CONNECTION_CLOSE, and when it comes
//! back on the same address its new QUIC endpoint cannot reset our old
//! connection (stateless-reset tokens are keyed per endpoint run). Without
//! help, our sender keeps writing into that dead connection until QUIC's idle
//! timeout, so the restarted peer hears nothing from us for that long. If
//! the leader then dies, the two survivors can send each other votes but
//! never receive the answers, and no leader is elected although a majority
//! is up (the crash-loop liveness bug of issue 3).
//!
//! So every stream hello carries the sender's incarnation. The acceptor
//! records it once the peer is authorized; each peer's sender notes the
//! incarnation current when it dials and replaces its connection as soon as
//! a different one is seen. Two live nodes never make each other reconnect:
//! a reconnect keeps the dialer's incarnation unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::sync::watch;

/// Latest authorized incarnation per peer node id; shared by the acceptor
/// (writer) and every peer sender (readers).
#[derive(Clone)]
pub(super) struct Incarnations {
    tx: watch::Sender<HashMap<u64, u64>>,
}

impl Incarnations {
    pub fn new() -> Incarnations {
        Incarnations {
            tx: watch::channel(HashMap::new()).0,
        }
    }

    /// Records an authorized hello's incarnation; wakes the peer's sender
    /// only when it changed.
    pub fn note(&self, node: u64, incarnation: u64, remote: SocketAddr) {
        self.tx.send_if_modified(|runs| {
            let previous = runs.insert(node, incarnation);
            match previous {
                Some(p) if p == incarnation => false,
                Some(_) => {
                    tracing::info!(peer = node, %remote, "federation peer restarted; replacing the connection to its previous run");
                    true
                }
                None => true,
            }
        });
    }

    /// Follows one peer's incarnation.
    pub fn follow(&self, node: u64) -> PeerRun {
        PeerRun {
            rx: self.tx.subscribe(),
            node,
            dialed: None,
        }
    }
}

/// One peer sender's view of its peer's incarnation.
pub(super) struct PeerRun {
    rx: watch::Receiver<HashMap<u64, u64>>,
    node: u64,
    /// The incarnation known when the current connection was dialed
    /// (`None`: not heard from the peer yet).
    dialed: Option<u64>,
}

impl PeerRun {
    /// Call right before dialing: the connection reaches at least this run.
    pub fn dialing(&mut self) {
        self.dialed = self.rx.borrow_and_update().get(&self.node).copied();
    }

    /// Resolves once the peer is known to run an incarnation other than the
    /// one noted by `dialing`: the connection may lead to a dead process.
    /// Dialing before the peer's first hello counts as a possibly dead run,
    /// so that first hello costs one extra handshake, never a long stall.
    pub async fn restarted(&mut self) {
        loop {
            let current = self.rx.borrow_and_update().get(&self.node).copied();
            if current.is_some() && current != self.dialed {
                return;
            }
            if self.rx.changed().await.is_err() {
                // The transport is gone; its senders end with their queues.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    async fn fires(run: &mut PeerRun) -> bool {
        tokio::time::timeout(Duration::from_millis(50), run.restarted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_new_incarnation_replaces_the_connection_once() {
        let runs = Incarnations::new();
        let mut run = runs.follow(2);
        run.dialing();
        assert!(!fires(&mut run).await, "nothing heard yet");
        runs.note(2, 7, addr());
        assert!(fires(&mut run).await, "first hello after dialing blindly");
        run.dialing();
        runs.note(2, 7, addr());
        assert!(!fires(&mut run).await, "same run: keep the connection");
        runs.note(3, 9, addr());
        assert!(
            !fires(&mut run).await,
            "another peer restarting is not ours"
        );
        runs.note(2, 8, addr());
        assert!(fires(&mut run).await, "the peer restarted");
        run.dialing();
        assert!(!fires(&mut run).await, "redialed the new run");
    }
}
