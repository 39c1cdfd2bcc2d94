//! The inbound side: accept connections, read each stream's hello, bind the
//! peer's certificate to the node id it claims, then deliver its messages.

use super::auth::{PeerAuthorizer, PeerDirection, PeerIdentity};
use super::incarnation::Incarnations;
use super::wire::{
    self, Hello, SnapshotAck, StreamKind, HELLO_LEN, MAX_REQUEST_BYTES, SNAPSHOT_CHUNK,
};
use super::RequestHandler;
use crate::metrics::Metrics;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a received snapshot may wait for room in the node's queue.
const SNAPSHOT_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take to arrive and to be answered (a join that
/// is forwarded to the leader and committed there fits well within it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Acceptor {
    pub authorize: PeerAuthorizer,
    pub max_message: usize,
    pub max_snapshot: usize,
    pub inbound: mpsc::Sender<Message>,
    pub metrics: Metrics,
    /// Answers request streams once the node is running (set later than
    /// the acceptor starts; requests before that are refused).
    pub requests: Arc<OnceLock<RequestHandler>>,
    pub incarnations: Incarnations,
}

/// One accepted connection: its verified chain and the node id it was bound
/// to by its first authorized hello (0 until then).
struct Conn {
    remote: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    bound: AtomicU64,
}

impl Acceptor {
    pub async fn run(self, endpoint: quinn::Endpoint) {
        let this = Arc::new(self);
        while let Some(incoming) = endpoint.accept().await {
            let this = this.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => this.serve(conn).await,
                    Err(e) => {
                        // Includes TLS failures: a certificate from another root.
                        this.refused("tls");
                        tracing::warn!(%remote, error = %e, "refused federation peer connection during the handshake; check that the peer's certificate chains to this federation's trust bundle");
                    }
                }
            });
        }
    }

    fn refused(&self, reason: &str) {
        self.metrics
            .transport_refused_peers
            .with_label_values(&[reason])
            .inc();
    }

    async fn serve(self: &Arc<Self>, conn: quinn::Connection) {
        let chain = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        let state = Arc::new(Conn {
            remote: conn.remote_address(),
            chain,
            bound: AtomicU64::new(0),
        });
        loop {
            tokio::select! {
                uni = conn.accept_uni() => {
                    let Ok(stream) = uni else { return };
                    let (this, state, conn) = (self.clone(), state.clone(), conn.clone());
                    tokio::spawn(async move { this.messages(conn, state, stream).await });
                }
                bi = conn.accept_bi() => {
                    let Ok((send, recv)) = bi else { return };
                    let (this, state, conn) = (self.clone(), state.clone(), conn.clone());
                    tokio::spawn(async move { this.bidirectional(conn, state, send, recv).await });
                }
            }
        }
    }

    /// Reads and authorizes a stream's hello, and records the peer's
    /// incarnation (only once authorized, so nobody else can make us drop
    /// our connection to a member).
    async fn hello(
        &self,
        conn: &quinn::Connection,
        state: &Conn,
        recv: &mut quinn::RecvStream,
        want: &[StreamKind],
    ) -> Option<(u64, StreamKind)> {
        let hello = self.authorized_hello(conn, state, recv, want).await?;
        self.incarnations
            .note(hello.node_id, hello.incarnation, state.remote);
        Some((hello.node_id, hello.kind))
    }

    /// Reads and authorizes a stream's hello. On refusal the whole
    /// connection is closed: its certificate is not good for that node id.
    async fn authorized_hello(
        &self,
        conn: &quinn::Connection,
        state: &Conn,
        recv: &mut quinn::RecvStream,
        want: &[StreamKind],
    ) -> Option<Hello> {
        let remote = state.remote;
        let mut buf = [0u8; HELLO_LEN];
        match tokio::time::timeout(HELLO_TIMEOUT, recv.read_exact(&mut buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => {
                self.refused("hello");
                tracing::warn!(%remote, "federation peer sent no hello in time; closing the connection");
                conn.close(quinn::VarInt::from_u32(5), b"no hello");
                return None;
            }
        }
        let hello = match Hello::decode(&buf) {
            Ok(h) if want.contains(&h.kind) => h,
            Ok(h) => {
                self.refused("hello");
                tracing::warn!(%remote, kind = ?h.kind, "federation peer opened a stream of the wrong kind; closing the connection");
                conn.close(quinn::VarInt::from_u32(5), b"bad hello");
                return None;
            }
            Err(reason) => {
                self.refused("hello");
                tracing::warn!(%remote, %reason, "federation peer sent a bad hello; closing the connection");
                conn.close(quinn::VarInt::from_u32(5), b"bad hello");
                return None;
            }
        };
        // One connection speaks for one node.
        let bound = state.bound.load(Ordering::Relaxed);
        if bound != 0 {
            if bound == hello.node_id {
                return Some(hello);
            }
            self.refused("identity");
            tracing::warn!(%remote, bound, claimed = hello.node_id, "federation peer claimed a second node id on one connection; closing it");
            conn.close(quinn::VarInt::from_u32(1), b"unauthorized peer");
            return None;
        }
        let peer = PeerIdentity {
            node_id: hello.node_id,
            direction: PeerDirection::Inbound,
            chain: &state.chain,
        };
        if let Err(reason) = (self.authorize)(&peer) {
            self.refused("identity");
            tracing::warn!(%remote, node = hello.node_id, %reason, "refused federation peer: its certificate is not the one of the node it claims to be");
            conn.close(quinn::VarInt::from_u32(1), b"unauthorized peer");
            return None;
        }
        match state
            .bound
            .compare_exchange(0, hello.node_id, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Some(hello),
            Err(other) if other == hello.node_id => Some(hello),
            Err(other) => {
                self.refused("identity");
                tracing::warn!(%remote, bound = other, claimed = hello.node_id, "federation peer claimed a second node id on one connection; closing it");
                conn.close(quinn::VarInt::from_u32(1), b"unauthorized peer");
                None
            }
        }
    }

    /// Checks a decoded message against the stream's bound node id.
    fn admissible(&self, remote: SocketAddr, node: u64, m: &Message) -> bool {
        if m.from != node {
            self.metrics.transport_malformed.inc();
            tracing::warn!(%remote, node, claimed = m.from, "federation peer sent a message under another node id; closing the stream");
            return false;
        }
        if wire::is_local(m.get_msg_type()) {
            self.metrics.transport_malformed.inc();
            tracing::warn!(%remote, node, kind = ?m.get_msg_type(), "federation peer sent a node-local Raft message type; closing the stream");
            return false;
        }
        true
    }

    async fn messages(
        self: Arc<Self>,
        conn: quinn::Connection,
        state: Arc<Conn>,
        mut stream: quinn::RecvStream,
    ) {
        let remote = state.remote;
        let Some((node, _)) = self
            .hello(&conn, &state, &mut stream, &[StreamKind::Messages])
            .await
        else {
            return;
        };
        loop {
            let mut len = [0u8; 4];
            if stream.read_exact(&mut len).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > self.max_message {
                self.metrics.transport_malformed.inc();
                tracing::warn!(%remote, len, max = self.max_message, "federation peer sent an oversized frame; closing the stream");
                let _ = stream.stop(quinn::VarInt::from_u32(2));
                return;
            }
            let mut buf = vec![0u8; len];
            if stream.read_exact(&mut buf).await.is_err() {
                return;
            }
            let m = match Message::parse_from_bytes(&buf) {
                Ok(m) => m,
                Err(e) => {
                    self.metrics.transport_malformed.inc();
                    tracing::warn!(%remote, error = %e, "federation peer sent a malformed frame; closing the stream");
                    let _ = stream.stop(quinn::VarInt::from_u32(3));
                    return;
                }
            };
            if !self.admissible(remote, node, &m) || m.get_msg_type() == MessageType::MsgSnapshot {
                // Snapshots travel on their own stream, never inline.
                let _ = stream.stop(quinn::VarInt::from_u32(4));
                return;
            }
            if self.inbound.try_send(m).is_err() {
                self.metrics
                    .transport_dropped
                    .with_label_values(&["inbound_full"])
                    .inc();
            }
        }
    }

    async fn bidirectional(
        self: Arc<Self>,
        conn: quinn::Connection,
        state: Arc<Conn>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let remote = state.remote;
        let Some((node, kind)) = self
            .hello(
                &conn,
                &state,
                &mut recv,
                &[StreamKind::Snapshot, StreamKind::Request],
            )
            .await
        else {
            return;
        };
        if kind == StreamKind::Request {
            self.request(remote, node, send, recv).await;
            return;
        }
        let ack = self.receive_snapshot(remote, node, &mut recv).await;
        let _ = send.write_all(&[ack as u8]).await;
        let _ = send.finish();
        // Keep the stream open until the ack is delivered (or the peer left).
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }

    /// One membership request: read it, let the handler answer, write the
    /// answer. A node without a handler yet answers with an empty body,
    /// which the caller reports as "not ready".
    async fn request(
        &self,
        remote: SocketAddr,
        node: u64,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let body = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut recv)).await {
            Ok(Ok(b)) => b,
            Ok(Err(reason)) => {
                self.metrics.transport_malformed.inc();
                tracing::warn!(%remote, node, %reason, "federation peer sent a malformed request");
                let _ = recv.stop(quinn::VarInt::from_u32(3));
                return;
            }
            Err(_) => return,
        };
        let answer = match self.requests.get() {
            // A handler that overruns answers nothing; the caller times out.
            Some(handler) => tokio::time::timeout(REQUEST_TIMEOUT, handler(node, body))
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if write_frame(&mut send, &answer).await.is_ok() {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        }
    }

    async fn receive_snapshot(
        &self,
        remote: SocketAddr,
        node: u64,
        recv: &mut quinn::RecvStream,
    ) -> SnapshotAck {
        let mut len = [0u8; 8];
        if recv.read_exact(&mut len).await.is_err() {
            return SnapshotAck::Malformed;
        }
        let len = u64::from_be_bytes(len);
        if len > self.max_snapshot as u64 {
            self.metrics.transport_malformed.inc();
            tracing::error!(%remote, node, len, max = self.max_snapshot, "refused a registry snapshot over the size limit; raise max_snapshot_bytes on every member if the registry really is that large");
            return SnapshotAck::TooLarge;
        }
        let len = len as usize;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; SNAPSHOT_CHUNK.min(len.max(1))];
        while buf.len() < len {
            let want = (len - buf.len()).min(chunk.len());
            if recv.read_exact(&mut chunk[..want]).await.is_err() {
                tracing::debug!(%remote, node, got = buf.len(), len, "snapshot stream ended early");
                return SnapshotAck::Malformed;
            }
            buf.extend_from_slice(&chunk[..want]);
        }
        let m = match Message::parse_from_bytes(&buf) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.transport_malformed.inc();
                tracing::warn!(%remote, node, error = %e, "federation peer sent a malformed snapshot");
                return SnapshotAck::Malformed;
            }
        };
        if !self.admissible(remote, node, &m) || m.get_msg_type() != MessageType::MsgSnapshot {
            return SnapshotAck::Malformed;
        }
        match tokio::time::timeout(SNAPSHOT_ENQUEUE_TIMEOUT, self.inbound.send(m)).await {
            Ok(Ok(())) => SnapshotAck::Accepted,
            _ => {
                self.metrics
                    .transport_dropped
                    .with_label_values(&["inbound_full"])
                    .inc();
                SnapshotAck::Busy
            }
        }
    }
}

/// Reads one length-prefixed request or reply body.
pub(super) async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| format!("reading the length: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_REQUEST_BYTES {
        return Err(format!(
            "{len}-byte body exceeds the {MAX_REQUEST_BYTES}-byte limit"
        ));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(buf)
}

pub(super) async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<(), String> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "{}-byte body exceeds the {MAX_REQUEST_BYTES}-byte limit",
            body.len()
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    send.write_all(&frame).await.map_err(|e| e.to_string())
}
