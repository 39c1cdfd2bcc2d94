//! QUIC tunnel between east-west gateways (UDP, by convention port 15443).
//!
//! One quinn connection per peer gateway, mutually authenticated with the
//! gateways' own SPIFFE certificates against the federation trust bundle.
//! Each proxied TCP connection is one bidirectional stream that starts with
//! a small header naming the destination SNI and the peer's listener port;
//! the peer dispatches it exactly like a connection on that listener (SNI
//! passthrough: the bytes are the sidecars' end-to-end mTLS, the gateways
//! never hold workload keys). When QUIC is unavailable the caller falls
//! back to TCP to the same address.

mod header;
mod server;
mod trust;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

pub use header::{read_header, write_header, HeaderError, MAX_SNI};
pub use server::serve;
pub use trust::TunnelVerifier;

use crate::proxy::BoxIo;
use crate::tls::{provider, CertReceiver, SpiffeVerifier, WatchResolver};

/// ALPN of the tunnel; anything else is refused.
pub const ALPN: &[u8] = b"isthmus-tunnel/1";

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel TLS setup: {0}")]
    Tls(String),
    #[error("binding the QUIC tunnel on udp/{0}: {1} (is the port free?)")]
    Bind(SocketAddr, std::io::Error),
    #[error("QUIC connection to peer gateway {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("opening a tunnel stream to {0}: {1}")]
    Stream(SocketAddr, String),
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Where the tunnel listens.
#[derive(Debug, Clone, Copy)]
pub struct TunnelConfig {
    pub bind: SocketAddr,
}

/// A tunnel connection without any packet from the peer for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut tc = quinn::TransportConfig::default();
    // A cut UDP path must be noticed quickly: the idle timeout closes the
    // connection, and new connections then fall back to TCP.
    tc.keep_alive_interval(Some(Duration::from_secs(1)));
    tc.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4096));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        tc.max_idle_timeout(Some(idle));
    }
    Arc::new(tc)
}

/// Builds the endpoint (server and client on one UDP socket). Both sides
/// present the current certificate of `cert` and verify the peer against
/// its current trust bundle at every handshake ([`TunnelVerifier`]), so
/// the tunnel follows certificate and root rotations.
pub fn endpoint(cfg: TunnelConfig, cert: &CertReceiver) -> Result<quinn::Endpoint, TunnelError> {
    let tls = |e: rustls::Error| TunnelError::Tls(e.to_string());
    // Refuse to start with a trust bundle no handshake could use.
    SpiffeVerifier::new(cert.borrow().trust_bundle(), Vec::new())
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    let verifier = Arc::new(TunnelVerifier::new(cert.clone()));
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(Arc::new(WatchResolver(cert.clone())));
    server.alpn_protocols = vec![ALPN.to_vec()];
    // No session resumption: a resumed handshake presents and verifies no
    // certificate, so it would carry the identity and the trust of the
    // first handshake across rotations (a peer moved to a new root would
    // still be seen under the old one, and a retired root would still be
    // accepted). Tunnel connections are long-lived; a full handshake per
    // connection costs nothing that matters.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(WatchResolver(cert.clone())));
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    let client = quinn::crypto::rustls::QuicClientConfig::try_from(client)
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport());
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport());
    let mut ep =
        quinn::Endpoint::server(server, cfg.bind).map_err(|e| TunnelError::Bind(cfg.bind, e))?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// Opens tunnel streams; one QUIC connection per peer, reused.
///
/// Falling back never costs a request more than [`FIRST_WAIT`]: the first
/// handshake to a peer is awaited that long (a healthy path answers in one
/// round trip), after which the caller uses TCP while the handshake goes on
/// in the background. A peer whose handshake failed is reached over TCP for
/// [`RETRY_AFTER`]; then one background handshake probes QUIC again while
/// connections keep using TCP.
#[derive(Debug, Clone)]
pub struct TunnelClient {
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<HashMap<SocketAddr, Peer>>>,
}

#[derive(Debug, Clone)]
enum Peer {
    Up(quinn::Connection),
    /// A handshake is running; its result arrives on the channel. Callers
    /// wait for it (at most [`FIRST_WAIT`]) only when `wait`: not while
    /// re-probing a peer known to be down.
    Connecting {
        rx: watch::Receiver<Option<Result<quinn::Connection, String>>>,
        wait: bool,
    },
    /// The last handshake failed; use TCP until then instead of paying the
    /// handshake timeout on every connection.
    DownUntil(tokio::time::Instant),
}

/// How long a peer whose tunnel handshake failed is reached over TCP only.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long a connection waits for a peer's first QUIC handshake before
/// taking TCP.
pub const FIRST_WAIT: Duration = Duration::from_millis(500);

impl TunnelClient {
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            conns: Arc::default(),
        }
    }

    async fn connection(
        &self,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<quinn::Connection, TunnelError> {
        let (mut pending, wait) = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            match conns.get(&peer).cloned() {
                Some(Peer::Up(c)) if c.close_reason().is_none() => return Ok(c),
                Some(Peer::DownUntil(t)) if tokio::time::Instant::now() < t => {
                    return Err(TunnelError::Connect(
                        peer,
                        "tunnel recently unreachable".into(),
                    ))
                }
                Some(Peer::Connecting { rx, wait }) => (rx, wait),
                // Known down: probe in the background only.
                Some(Peer::DownUntil(_)) => {
                    let rx = self.spawn_handshake(peer, timeout);
                    conns.insert(
                        peer,
                        Peer::Connecting {
                            rx: rx.clone(),
                            wait: false,
                        },
                    );
                    (rx, false)
                }
                // Never tried, or the connection died (e.g. UDP was cut
                // and the idle timeout closed it).
                _ => {
                    let rx = self.spawn_handshake(peer, timeout);
                    conns.insert(
                        peer,
                        Peer::Connecting {
                            rx: rx.clone(),
                            wait: true,
                        },
                    );
                    (rx, true)
                }
            }
        };
        if !wait {
            return Err(TunnelError::Connect(
                peer,
                "probing the tunnel in the background".into(),
            ));
        }
        let waited = tokio::time::timeout(FIRST_WAIT.min(timeout), async {
            match pending.wait_for(|r| r.is_some()).await {
                Ok(r) => r.clone(),
                Err(_) => Some(Err("handshake task ended".to_string())),
            }
        })
        .await;
        match waited {
            Ok(Some(Ok(c))) => Ok(c),
            Ok(Some(Err(e))) => Err(TunnelError::Connect(peer, e)),
            Ok(None) | Err(_) => Err(TunnelError::Connect(
                peer,
                format!(
                    "no QUIC handshake within {:?}; using TCP while it continues",
                    FIRST_WAIT.min(timeout)
                ),
            )),
        }
    }

    /// Starts a handshake whose outcome updates the peer table.
    fn spawn_handshake(
        &self,
        peer: SocketAddr,
        timeout: Duration,
    ) -> watch::Receiver<Option<Result<quinn::Connection, String>>> {
        let (tx, rx) = watch::channel(None);
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.handshake(peer, timeout).await;
            let entry = match &result {
                Ok(c) => Peer::Up(c.clone()),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, retry_in = ?RETRY_AFTER, "QUIC tunnel unavailable; using TCP to this peer");
                    Peer::DownUntil(tokio::time::Instant::now() + RETRY_AFTER)
                }
            };
            this.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(peer, entry);
            tx.send_replace(Some(result.map_err(|e| e.to_string())));
        });
        rx
    }

    async fn handshake(
        &self,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<quinn::Connection, TunnelError> {
        // The peer's certificate is checked against the bundle (any gateway
        // identity); the server name is not a DNS identity.
        let connecting = self
            .endpoint
            .connect(peer, "isthmus-tunnel")
            .map_err(|e| TunnelError::Connect(peer, e.to_string()))?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| TunnelError::Connect(peer, "handshake timed out".into()))?
            .map_err(|e| TunnelError::Connect(peer, e.to_string()))?;
        tracing::info!(%peer, "QUIC tunnel connected to peer gateway");
        Ok(conn)
    }

    /// A stream to `peer` carrying a connection for `sni` on the peer's
    /// listener `port`; `timeout` bounds a new QUIC handshake (the peer
    /// cluster's connect timeout).
    pub async fn open(
        &self,
        peer: SocketAddr,
        sni: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<BoxIo, TunnelError> {
        let conn = self.connection(peer, timeout).await?;
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                // A dead cached connection: forget it so the next call reconnects.
                self.conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&peer);
                return Err(TunnelError::Stream(peer, e.to_string()));
            }
        };
        write_header(&mut send, sni, port).await?;
        send.flush()
            .await
            .map_err(|e| TunnelError::Stream(peer, e.to_string()))?;
        Ok(Box::new(tokio::io::join(recv, send)))
    }
}
