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
mod sender;
pub mod wire;

pub use auth::{
    node_identity_authorizer, node_identity_map, node_issuer_authorizer,
    node_issuer_rule_authorizer, trust_domain_authorizer, PeerAuthorizer, PeerDirection,
    PeerIdentity,
};

use super::{Transport, INBOUND_QUEUE};
use crate::metrics::Metrics;
use incarnation::Incarnations;
use raft::eraftpb::{Message, MessageType};
use sender::{check_outbound, PeerSender};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use wire::{Hello, StreamKind};

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

/// A random incarnation for this run of the transport (never 0).
fn new_incarnation() -> u64 {
    loop {
        let n: u64 = rand::random();
        if n != 0 {
            return n;
        }
    }
}
