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
pub mod wire;

pub use auth::{
    node_identity_authorizer, node_identity_map, trust_domain_authorizer, PeerAuthorizer,
    PeerDirection, PeerIdentity,
};

use super::{Transport, INBOUND_QUEUE};
use crate::metrics::Metrics;
use protobuf::Message as _;
use raft::eraftpb::Message;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Decides whether a peer's verified chain (leaf first) may talk Raft to us.
pub type PeerAuthorizer =
    Arc<dyn Fn(&[CertificateDer<'static>]) -> Result<(), String> + Send + Sync>;

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
    /// Largest accepted frame (a snapshot travels as one message).
    pub max_message_bytes: usize,
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
            max_message_bytes: 64 << 20,
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

pub struct QuicTransport {
    id: u64,
    endpoint: quinn::Endpoint,
    queues: watch::Sender<HashMap<u64, mpsc::Sender<Message>>>,
    peer_queue: usize,
    default_server_name: String,
    metrics: Metrics,
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
        let transport = Arc::new(QuicTransport {
            id: cfg.id,
            endpoint: endpoint.clone(),
            queues: watch::channel(HashMap::new()).0,
            peer_queue: cfg.peer_queue.max(1),
            default_server_name: cfg.default_server_name.clone(),
            metrics: metrics.clone(),
            runtime: runtime.clone(),
        });
        for (id, addr) in &cfg.peers {
            transport.add_peer(*id, addr.clone());
        }
        let accept = Acceptor {
            authorize: cfg.authorize,
            max: cfg.max_message_bytes,
            inbound: in_tx,
            metrics,
        };
        runtime.spawn(accept.run(endpoint));
        Ok((transport, in_rx))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Adds or replaces a peer; its previous task (if any) ends when its
    /// queue is dropped.
    pub fn add_peer(&self, id: u64, addr: PeerAddr) {
        if id == self.id {
            return;
        }
        let (tx, rx) = mpsc::channel(self.peer_queue);
        self.queues.send_modify(|q| {
            q.insert(id, tx);
        });
        let peer = PeerSender {
            id,
            addr,
            endpoint: self.endpoint.clone(),
            metrics: self.metrics.clone(),
        };
        self.runtime.spawn(peer.run(rx));
    }

    pub fn remove_peer(&self, id: u64) {
        self.queues.send_modify(|q| {
            q.remove(&id);
        });
    }

    /// Closes every connection; peers see the node as gone.
    pub fn close(&self) {
        self.queues.send_modify(|q| q.clear());
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
    }
}

impl Transport for QuicTransport {
    fn send(&self, msg: Message) {
        let reason = match self.queues.borrow().get(&msg.to) {
            None => "unknown_peer",
            Some(q) => match q.try_send(msg) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => "peer_queue_full",
                Err(mpsc::error::TrySendError::Closed(_)) => "peer_closed",
            },
        };
        self.metrics
            .transport_dropped
            .with_label_values(&[reason])
            .inc();
    }

    fn set_peer(&self, id: u64, addr: &str) {
        match PeerAddr::parse(addr, &self.default_server_name) {
            Ok(a) => self.add_peer(id, a),
            Err(e) => tracing::warn!(peer = id, error = %e, "ignoring unusable peer address"),
        }
    }
}

/// Owns the connection to one peer: connect with backoff, stream frames,
/// reconnect on error. Messages lost on a broken connection are Raft's to
/// resend.
struct PeerSender {
    id: u64,
    addr: PeerAddr,
    endpoint: quinn::Endpoint,
    metrics: Metrics,
}

impl PeerSender {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut backoff = Duration::from_millis(50);
        let peer_label = self.id.to_string();
        loop {
            let conn = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(peer = self.id, addr = %self.addr.addr, error = %e, "cannot reach federation peer; retrying");
                    // Keep the queue from filling with stale messages while the peer is away.
                    let sleep = tokio::time::sleep(backoff);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            m = rx.recv() => match m {
                                Some(_) => self.metrics.transport_dropped.with_label_values(&["peer_unreachable"]).inc(),
                                None => return,
                            },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            let mut stream = match conn.open_uni().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = self.id, error = %e, "cannot open stream to federation peer");
                    continue;
                }
            };
            let mut rtt = tokio::time::interval(Duration::from_secs(5));
            loop {
                let msg = tokio::select! {
                    m = rx.recv() => m,
                    _ = rtt.tick() => {
                        self.metrics.peer_rtt_seconds.with_label_values(&[&peer_label]).set(conn.rtt().as_secs_f64());
                        continue;
                    }
                };
                let Some(msg) = msg else {
                    conn.close(quinn::VarInt::from_u32(0), b"peer removed");
                    return;
                };
                let bytes = match msg.write_to_bytes() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(peer = self.id, error = %e, "cannot encode raft message");
                        continue;
                    }
                };
                let Ok(len) = u32::try_from(bytes.len()) else {
                    self.metrics
                        .transport_dropped
                        .with_label_values(&["too_large"])
                        .inc();
                    continue;
                };
                let mut frame = Vec::with_capacity(4 + bytes.len());
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&bytes);
                if let Err(e) = stream.write_all(&frame).await {
                    tracing::debug!(peer = self.id, error = %e, "federation peer connection broke; reconnecting");
                    self.metrics
                        .transport_dropped
                        .with_label_values(&["connection_lost"])
                        .inc();
                    break;
                }
            }
        }
    }

    async fn connect(&self) -> Result<quinn::Connection, String> {
        let connecting = self
            .endpoint
            .connect(self.addr.addr, &self.addr.server_name)
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())
    }
}

struct Acceptor {
    authorize: PeerAuthorizer,
    max: usize,
    inbound: mpsc::Sender<Message>,
    metrics: Metrics,
}

impl Acceptor {
    async fn run(self, endpoint: quinn::Endpoint) {
        let this = Arc::new(self);
        while let Some(incoming) = endpoint.accept().await {
            let this = this.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => this.serve(conn).await,
                    Err(e) => {
                        // Includes TLS failures: a certificate from another root.
                        this.metrics.transport_refused_peers.inc();
                        tracing::warn!(%remote, error = %e, "refused federation peer connection");
                    }
                }
            });
        }
    }

    async fn serve(&self, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let chain = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .map(|b| *b)
            .unwrap_or_default();
        if let Err(reason) = (self.authorize)(&chain) {
            self.metrics.transport_refused_peers.inc();
            tracing::warn!(%remote, %reason, "refused federation peer: not a member of this trust domain");
            conn.close(quinn::VarInt::from_u32(1), b"unauthorized peer");
            return;
        }
        // One connection speaks for one node: the first sender id seen is
        // pinned and frames claiming another id are refused.
        let pinned = Arc::new(AtomicU64::new(0));
        while let Ok(mut stream) = conn.accept_uni().await {
            let inbound = self.inbound.clone();
            let metrics = self.metrics.clone();
            let max = self.max;
            let pinned = pinned.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 4];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes(len) as usize;
                    if len > max {
                        metrics.transport_malformed.inc();
                        tracing::warn!(%remote, len, max, "federation peer sent an oversized frame; closing the stream");
                        let _ = stream.stop(quinn::VarInt::from_u32(2));
                        return;
                    }
                    let mut buf = vec![0u8; len];
                    if stream.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    match Message::parse_from_bytes(&buf) {
                        Ok(m) => {
                            let first = pinned
                                .compare_exchange(0, m.from, Ordering::Relaxed, Ordering::Relaxed)
                                .unwrap_or_else(|current| current);
                            if first != 0 && first != m.from {
                                metrics.transport_malformed.inc();
                                tracing::warn!(%remote, pinned = first, claimed = m.from, "federation peer changed its node id mid-connection; closing the stream");
                                let _ = stream.stop(quinn::VarInt::from_u32(4));
                                return;
                            }
                            if inbound.try_send(m).is_err() {
                                metrics
                                    .transport_dropped
                                    .with_label_values(&["inbound_full"])
                                    .inc();
                            }
                        }
                        Err(e) => {
                            metrics.transport_malformed.inc();
                            tracing::warn!(%remote, error = %e, "federation peer sent a malformed frame; closing the stream");
                            let _ = stream.stop(quinn::VarInt::from_u32(3));
                            return;
                        }
                    }
                }
            });
        }
    }
}

/// Authorizes peers whose leaf certificate carries a SPIFFE URI SAN in
/// `trust_domain` (`spiffe://<trust_domain>/...`).
pub fn trust_domain_authorizer(trust_domain: &str) -> PeerAuthorizer {
    let prefix = format!("spiffe://{trust_domain}/");
    Arc::new(move |chain: &[CertificateDer<'static>]| {
        let leaf = chain
            .first()
            .ok_or_else(|| "peer presented no certificate".to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("unparsable peer certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?
            .ok_or_else(|| "peer certificate has no subjectAltName".to_string())?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        if uris.iter().any(|u| u.starts_with(&prefix)) {
            Ok(())
        } else {
            Err(format!(
                "peer identity {uris:?} is not in trust domain {prefix}"
            ))
        }
    })
}
