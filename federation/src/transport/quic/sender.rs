//! The outbound side of the QUIC transport: one [`PeerSender`] task per peer
//! that dials it with backoff, checks its identity ([`check_outbound`]),
//! streams Raft messages to it, and sends snapshots on streams of their own
//! ([`send_snapshot`]).

use super::auth::{PeerDirection, PeerIdentity};
use super::incarnation::PeerRun;
use super::wire::{self, SnapshotAck, StreamKind};
use super::{PeerAddr, Shared};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a peer sender stopped using a connection.
enum Streamed {
    /// The peer was removed (its queue closed).
    QueueClosed,
    /// A new run of the peer said hello: this connection may lead to the
    /// dead one (see `incarnation`).
    PeerRestarted,
    Broken,
}

/// Owns the connection to one peer: connect with backoff, check that the
/// peer is who its node id says, stream frames, reconnect on error or as
/// soon as the peer restarted. Messages lost on a broken connection are
/// Raft's to resend.
pub(super) struct PeerSender {
    pub(super) id: u64,
    pub(super) addr: PeerAddr,
    pub(super) shared: Arc<Shared>,
}

impl PeerSender {
    /// Drops what arrives while the peer is away (keeping the queue from
    /// filling with stale messages) until `wait` passed.
    async fn drain_for(&self, rx: &mut mpsc::Receiver<Message>, wait: Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                m = rx.recv() => match m {
                    Some(m) => {
                        self.shared.metrics.transport_dropped.with_label_values(&["peer_unreachable"]).inc();
                        if m.get_msg_type() == MessageType::MsgSnapshot {
                            self.shared.report_snapshot(self.id, false);
                        }
                    }
                    None => return false,
                },
            }
        }
    }

    pub(super) async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut backoff = Duration::from_millis(50);
        let mut run = self.shared.incarnations.follow(self.id);
        loop {
            run.dialing();
            let connected = tokio::select! {
                c = self.connect() => c,
                // A new run came up while we were dialing: dial it now.
                _ = run.restarted() => continue,
            };
            let conn = match connected {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(peer = self.id, addr = %self.addr.addr, error = %e, "cannot reach federation peer; retrying");
                    tokio::select! {
                        open = self.drain_for(&mut rx, backoff) => {
                            if !open {
                                return;
                            }
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        // The peer just came (back) up: no reason to wait.
                        _ = run.restarted() => backoff = MIN_BACKOFF,
                    }
                    continue;
                }
            };
            if !self.authorized(&conn) {
                conn.close(quinn::VarInt::from_u32(1), b"unexpected identity");
                if !self.drain_for(&mut rx, MAX_BACKOFF).await {
                    return;
                }
                continue;
            }
            backoff = MIN_BACKOFF;
            match self.stream_messages(&conn, &mut rx, &mut run).await {
                Streamed::QueueClosed => {
                    conn.close(quinn::VarInt::from_u32(0), b"peer removed");
                    return;
                }
                Streamed::PeerRestarted => {
                    conn.close(quinn::VarInt::from_u32(0), b"peer restarted");
                }
                Streamed::Broken => {}
            }
        }
    }

    /// Writes queued messages on one connection until it breaks, the peer
    /// turns out to have restarted, or the queue closes.
    async fn stream_messages(
        &self,
        conn: &quinn::Connection,
        rx: &mut mpsc::Receiver<Message>,
        run: &mut PeerRun,
    ) -> Streamed {
        let peer_label = self.id.to_string();
        let mut stream = tokio::select! {
            s = self.open_messages(conn) => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = self.id, error = %e, "cannot open stream to federation peer");
                    return Streamed::Broken;
                }
            },
            _ = run.restarted() => return Streamed::PeerRestarted,
        };
        let mut rtt = tokio::time::interval(Duration::from_secs(5));
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = rtt.tick() => {
                    self.shared.metrics.peer_rtt_seconds.with_label_values(&[&peer_label]).set(conn.rtt().as_secs_f64());
                    continue;
                }
                _ = run.restarted() => return Streamed::PeerRestarted,
            };
            let Some(msg) = msg else {
                return Streamed::QueueClosed;
            };
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                tokio::spawn(send_snapshot(
                    self.shared.clone(),
                    self.id,
                    conn.clone(),
                    msg,
                ));
                continue;
            }
            let Some(frame) = self.frame(&msg) else {
                continue;
            };
            // A write blocks once a dead peer stops acknowledging; a new
            // run of that peer must not wait for it.
            let written = tokio::select! {
                w = stream.write_all(&frame) => w,
                _ = run.restarted() => return Streamed::PeerRestarted,
            };
            if let Err(e) = written {
                tracing::debug!(peer = self.id, error = %e, "federation peer connection broke; reconnecting");
                self.shared
                    .metrics
                    .transport_dropped
                    .with_label_values(&["connection_lost"])
                    .inc();
                return Streamed::Broken;
            }
        }
    }

    /// Encodes one message as a length-prefixed frame (`None`: dropped).
    fn frame(&self, msg: &Message) -> Option<Vec<u8>> {
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(peer = self.id, error = %e, "cannot encode raft message");
                return None;
            }
        };
        let Ok(len) = u32::try_from(bytes.len()) else {
            self.shared
                .metrics
                .transport_dropped
                .with_label_values(&["too_large"])
                .inc();
            return None;
        };
        let mut frame = Vec::with_capacity(4 + bytes.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&bytes);
        Some(frame)
    }

    /// The server we reached must hold the certificate of the node we meant
    /// to reach (an address pointing at the wrong member is refused too).
    fn authorized(&self, conn: &quinn::Connection) -> bool {
        check_outbound(&self.shared, self.id, &self.addr, conn).is_ok()
    }

    async fn open_messages(&self, conn: &quinn::Connection) -> Result<quinn::SendStream, String> {
        let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
        let hello = self.shared.hello(StreamKind::Messages);
        stream
            .write_all(&hello.encode())
            .await
            .map_err(|e| e.to_string())?;
        Ok(stream)
    }

    async fn connect(&self) -> Result<quinn::Connection, String> {
        let connecting = self
            .shared
            .endpoint
            .connect(self.addr.addr, &self.addr.server_name)
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())
    }
}

/// The server we reached must hold the certificate of the node we meant
/// to reach (an address pointing at the wrong member is refused too).
pub(super) fn check_outbound(
    shared: &Shared,
    id: u64,
    addr: &PeerAddr,
    conn: &quinn::Connection,
) -> Result<(), String> {
    let chain = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|b| *b)
        .unwrap_or_default();
    let peer = PeerIdentity {
        node_id: id,
        direction: PeerDirection::Outbound,
        chain: &chain,
    };
    (shared.authorize)(&peer).map_err(|reason| {
        shared
            .metrics
            .transport_refused_peers
            .with_label_values(&["outbound_identity"])
            .inc();
        tracing::warn!(peer = id, addr = %addr.addr, %reason, "federation peer at this address is not the node configured for it; not talking to it");
        format!("the peer at {} is not federation node {id}: {reason}", addr.addr)
    })
}

/// Sends one snapshot on its own stream and reports the outcome to the node
/// once the receiver acknowledged it.
async fn send_snapshot(shared: Arc<Shared>, peer: u64, conn: quinn::Connection, msg: Message) {
    let outcome = snapshot_exchange(&shared, &conn, &msg).await;
    match &outcome {
        Ok(()) => tracing::info!(peer, "registry snapshot delivered"),
        Err(reason) => {
            tracing::warn!(peer, %reason, "registry snapshot not delivered; the leader retries")
        }
    }
    shared.report_snapshot(peer, outcome.is_ok());
}

async fn snapshot_exchange(
    shared: &Shared,
    conn: &quinn::Connection,
    msg: &Message,
) -> Result<(), String> {
    let bytes = msg.write_to_bytes().map_err(|e| e.to_string())?;
    if bytes.len() > shared.max_snapshot {
        tracing::error!(
            len = bytes.len(),
            max = shared.max_snapshot,
            "registry snapshot is larger than max_snapshot_bytes; raise the limit on every member"
        );
        return Err(format!(
            "snapshot of {} bytes exceeds max_snapshot_bytes {}",
            bytes.len(),
            shared.max_snapshot
        ));
    }
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = shared.hello(StreamKind::Snapshot);
    send.write_all(&hello.encode())
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(&(bytes.len() as u64).to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    for chunk in bytes.chunks(wire::SNAPSHOT_CHUNK) {
        send.write_all(chunk).await.map_err(|e| e.to_string())?;
    }
    send.finish().map_err(|e| e.to_string())?;
    shared
        .metrics
        .snapshot_bytes_sent
        .inc_by(bytes.len() as u64);
    let mut ack = [0u8; 1];
    // The receiver answers once the snapshot is queued for its node; a slow
    // link gets a generous bound rather than an endless wait.
    tokio::time::timeout(Duration::from_secs(120), recv.read_exact(&mut ack))
        .await
        .map_err(|_| "no acknowledgement within 120 s".to_string())?
        .map_err(|e| e.to_string())?;
    match SnapshotAck::from_byte(ack[0]) {
        Some(SnapshotAck::Accepted) => Ok(()),
        Some(other) => Err(format!("peer refused the snapshot: {other:?}")),
        None => Err(format!("peer answered unknown status {}", ack[0])),
    }
}
