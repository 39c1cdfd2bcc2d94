//! Raft peer transport over QUIC with mutual TLS.
//!
//! The caller supplies the rustls configurations (the identity crate's SPIFFE
//! verifiers in production) and a [`PeerAuthorizer`] that binds a peer's
//! verified certificate to the Raft node id it speaks for, on inbound streams
//! (the id in the stream hello) and on outbound connections (the id we
//! dialed). Each peer gets its own outbound queue and task, so a slow or dead
//! peer never stalls the others: when its queue is full, messages to it are
//! dropped and counted (Raft resends what matters). Snapshots travel on a
//! stream of their own (see [`wire`]), so a large registry never delays
//! heartbeats, and their delivery is reported back to the node.

mod accept;
mod auth;
mod incarnation;
pub mod wire;

pub use auth::{
    node_identity_authorizer, node_identity_map, node_issuer_authorizer,
    node_issuer_rule_authorizer, trust_domain_authorizer, PeerAuthorizer, PeerDirection,
    PeerIdentity,
};

use super::{Transport, INBOUND_QUEUE};
use crate::metrics::Metrics;
use incarnation::{Incarnations, PeerRun};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use wire::{Hello, SnapshotAck, StreamKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    /// Name the peer's certificate is verified against.
    pub server_name: String,
}

impl PeerAddr {
    /// Parses `host:port` or `server_name@host:port`.
    pub fn parse(s: &str, default_name: &str) -> Result<PeerAddr, QuicError> {
        let (name, addr) = match s.split_once('@') {
            Some((n, a)) => (n.to_string(), a),
            None => (default_name.to_string(), s),
        };
        let addr = addr.parse().map_err(|e| QuicError::BadPeerAddr {
            addr: s.to_string(),
            reason: format!("{e}"),
        })?;
        Ok(PeerAddr {
            addr,
            server_name: name,
        })
    }
}

pub struct QuicConfig {
    pub id: u64,
    pub bind: SocketAddr,
    pub server_tls: Arc<rustls::ServerConfig>,
    pub client_tls: Arc<rustls::ClientConfig>,
    pub peers: HashMap<u64, PeerAddr>,
    pub authorize: PeerAuthorizer,
    /// Largest accepted Raft message frame (entries, heartbeats, votes).
    /// Entry batches are bounded by `NodeConfig::max_size_per_msg`.
    pub max_message_bytes: usize,
    /// Largest registry snapshot sent or accepted (encoded). Must be the same
    /// on every member; a snapshot over it is refused with an error naming
    /// this setting.
    pub max_snapshot_bytes: usize,
    /// Outbound messages buffered per peer before dropping.
    pub peer_queue: usize,
    /// Server name for peers added later without one.
    pub default_server_name: String,
}

impl QuicConfig {
    pub fn new(
        id: u64,
        bind: SocketAddr,
        server_tls: Arc<rustls::ServerConfig>,
        client_tls: Arc<rustls::ClientConfig>,
        authorize: PeerAuthorizer,
    ) -> QuicConfig {
        QuicConfig {
            id,
            bind,
            server_tls,
            client_tls,
            peers: HashMap::new(),
            authorize,
            max_message_bytes: 16 << 20,
            max_snapshot_bytes: 1 << 30,
            peer_queue: 1024,
            default_server_name: "federation.isthmus.local".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("the TLS configuration cannot be used for QUIC (QUIC needs TLS 1.3): {0}")]
    Tls(String),
    #[error("cannot bind the Raft peer endpoint on UDP {addr}: {source}; is another process using the port?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid peer address `{addr}`: {reason}; expected host:port or server_name@host:port"
    )]
    BadPeerAddr { addr: String, reason: String },
}

/// Answers a request stream: called with the authenticated node id of the
/// sender and the request body, returns the reply body.
pub type RequestHandler =
    Arc<dyn Fn(u64, Vec<u8>) -> futures::future::BoxFuture<'static, Vec<u8>> + Send + Sync>;

/// What every peer task shares.
struct Shared {
    id: u64,
    /// This run of the transport, sent in every hello.
    incarnation: u64,
    /// Every peer's latest run, learned from its hellos.
    incarnations: Incarnations,
    endpoint: quinn::Endpoint,
    authorize: PeerAuthorizer,
    max_snapshot: usize,
    /// The node's inbound queue, for snapshot delivery reports.
    inbound: mpsc::Sender<Message>,
    metrics: Metrics,
}

impl Shared {
    /// Tells the node whether a snapshot reached `peer`, as raft-rs wants
    /// (`MsgSnapStatus` stepped locally; never accepted from the network).
    fn hello(&self, kind: StreamKind) -> Hello {
        Hello {
            node_id: self.id,
            kind,
            incarnation: self.incarnation,
        }
    }

    fn report_snapshot(&self, peer: u64, delivered: bool) {
        if !delivered {
            self.metrics.snapshots_failed.inc();
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapStatus);
        m.from = peer;
        m.to = self.id;
        m.reject = !delivered;
        let inbound = self.inbound.clone();
        // Rare and important: wait for room rather than drop it.
        tokio::spawn(async move {
            let _ = inbound.send(m).await;
        });
    }
}

pub struct QuicTransport {
    shared: Arc<Shared>,
    queues: watch::Sender<HashMap<u64, mpsc::Sender<Message>>>,
    /// Where each peer lives, for requests and for telling joining members.
    addrs: watch::Sender<HashMap<u64, PeerAddr>>,
    requests: Arc<OnceLock<RequestHandler>>,
    peer_queue: usize,
    default_server_name: String,
    runtime: tokio::runtime::Handle,
}

impl QuicTransport {
    /// Binds the endpoint and starts accepting peers. Call from within the
    /// runtime that should run the transport's tasks.
    pub fn start(
        cfg: QuicConfig,
        metrics: Metrics,
    ) -> Result<(Arc<QuicTransport>, mpsc::Receiver<Message>), QuicError> {
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(cfg.server_tls.clone())
                .map_err(|e| QuicError::Tls(e.to_string()))?;
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(cfg.client_tls.clone())
                .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        let mut tc = quinn::TransportConfig::default();
        tc.keep_alive_interval(Some(Duration::from_secs(2)));
        tc.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            10_000,
        ))));
        let tc = Arc::new(tc);
        server.transport_config(tc.clone());
        let mut endpoint =
            quinn::Endpoint::server(server, cfg.bind).map_err(|source| QuicError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(tc);
        endpoint.set_default_client_config(client);

        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let runtime = tokio::runtime::Handle::current();
        let incarnations = Incarnations::new();
        let shared = Arc::new(Shared {
            id: cfg.id,
            incarnation: new_incarnation(),
            incarnations: incarnations.clone(),
            endpoint: endpoint.clone(),
            authorize: cfg.authorize.clone(),
            max_snapshot: cfg.max_snapshot_bytes,
            inbound: in_tx.clone(),
            metrics: metrics.clone(),
        });
        let requests = Arc::new(OnceLock::new());
        let transport = Arc::new(QuicTransport {
            shared,
            queues: watch::channel(HashMap::new()).0,
            addrs: watch::channel(HashMap::new()).0,
            requests: requests.clone(),
            peer_queue: cfg.peer_queue.max(1),
            default_server_name: cfg.default_server_name.clone(),
            runtime: runtime.clone(),
        });
        for (id, addr) in &cfg.peers {
            transport.add_peer(*id, addr.clone());
        }
        let accept = accept::Acceptor {
            authorize: cfg.authorize,
            max_message: cfg.max_message_bytes,
            max_snapshot: cfg.max_snapshot_bytes,
            inbound: in_tx,
            metrics,
            requests,
            incarnations,
        };
        runtime.spawn(accept.run(endpoint));
        Ok((transport, in_rx))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// Adds or replaces a peer; its previous task (if any) ends when its
    /// queue is dropped.
    pub fn add_peer(&self, id: u64, addr: PeerAddr) {
        if id == self.shared.id {
            return;
        }
        // Membership changes announce every member again; keep a running
        // connection when nothing changed.
        let unchanged = self.addrs.borrow().get(&id) == Some(&addr)
            && self
                .queues
                .borrow()
                .get(&id)
                .is_some_and(|q| !q.is_closed());
        if unchanged {
            return;
        }
        let (tx, rx) = mpsc::channel(self.peer_queue);
        self.queues.send_modify(|q| {
            q.insert(id, tx);
        });
        self.addrs.send_modify(|a| {
            a.insert(id, addr.clone());
        });
        let peer = PeerSender {
            id,
            addr,
            shared: self.shared.clone(),
        };
        self.runtime.spawn(peer.run(rx));
    }

    pub fn remove_peer(&self, id: u64) {
        self.queues.send_modify(|q| {
            q.remove(&id);
        });
        self.addrs.send_modify(|a| {
            a.remove(&id);
        });
    }

    /// Every known peer as `server_name@host:port` (what `set_peer` parses).
    pub fn peer_addrs(&self) -> Vec<(u64, String)> {
        let mut out: Vec<(u64, String)> = self
            .addrs
            .borrow()
            .iter()
            .map(|(id, a)| (*id, format!("{}@{}", a.server_name, a.addr)))
            .collect();
        out.sort();
        out
    }

    /// Installs the answerer of request streams (membership requests). Only
    /// the first call takes effect; until then requests get an empty reply.
    pub fn set_request_handler(&self, handler: RequestHandler) {
        if self.requests.set(handler).is_err() {
            tracing::warn!("a federation request handler is already installed; ignoring another");
        }
    }

    /// Sends one request to peer `id` on a connection of its own (requests
    /// are rare: joins and membership changes) and returns the reply body.
    /// The peer must prove it is node `id`, as for Raft messages.
    pub async fn request(
        &self,
        id: u64,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let addr = self
            .addrs
            .borrow()
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no address known for federation node {id}"))?;
        let shared = self.shared.clone();
        let body = body.to_vec();
        let exchange = async move {
            let conn = shared
                .endpoint
                .connect(addr.addr, &addr.server_name)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", addr.addr))?;
            check_outbound(&shared, id, &addr, &conn)?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let hello = shared.hello(StreamKind::Request);
            send.write_all(&hello.encode())
                .await
                .map_err(|e| e.to_string())?;
            accept::write_frame(&mut send, &body).await?;
            let _ = send.finish();
            let reply = accept::read_frame(&mut recv).await;
            conn.close(quinn::VarInt::from_u32(0), b"done");
            reply
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer from federation node {id} within {timeout:?}"))?
    }

    /// Closes every connection; peers see the node as gone.
    pub fn close(&self) {
        self.queues.send_modify(|q| q.clear());
        self.shared
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"shutdown");
    }
}

impl Transport for QuicTransport {
    fn send(&self, msg: Message) {
        let to = msg.to;
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let reason = match self.queues.borrow().get(&to) {
            None => "unknown_peer",
            Some(q) => match q.try_send(msg) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => "peer_queue_full",
                Err(mpsc::error::TrySendError::Closed(_)) => "peer_closed",
            },
        };
        self.shared
            .metrics
            .transport_dropped
            .with_label_values(&[reason])
            .inc();
        if snapshot {
            self.shared.report_snapshot(to, false);
        }
    }

    fn set_peer(&self, id: u64, addr: &str) {
        match PeerAddr::parse(addr, &self.default_server_name) {
            Ok(a) => self.add_peer(id, a),
            Err(e) => tracing::warn!(peer = id, error = %e, "ignoring unusable peer address"),
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A random incarnation for this run of the transport (never 0).
fn new_incarnation() -> u64 {
    loop {
        let n: u64 = rand::random();
        if n != 0 {
            return n;
        }
    }
}

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
struct PeerSender {
    id: u64,
    addr: PeerAddr,
    shared: Arc<Shared>,
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

    async fn run(self, mut rx: mpsc::Receiver<Message>) {
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
fn check_outbound(
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
