//! Opening tunnel streams to peer gateways: one QUIC connection per peer,
//! reused, resumed with 0-RTT when that is safe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::early::{EarlyStream, Settled};
use super::{encode_header, TunnelError};
use crate::metrics::Metrics;
use crate::proxy::BoxIo;

/// How long a peer whose tunnel handshake failed is reached over TCP only.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long a connection waits for a peer's first QUIC handshake before
/// taking TCP.
pub const FIRST_WAIT: Duration = Duration::from_millis(500);

/// Opens tunnel streams; one QUIC connection per peer, reused.
///
/// Falling back never costs a request more than [`FIRST_WAIT`]: the first
/// handshake to a peer is awaited that long (a healthy path answers in one
/// round trip), after which the caller uses TCP while the handshake goes on
/// in the background. A peer whose handshake failed is reached over TCP for
/// [`RETRY_AFTER`]; then one background handshake probes QUIC again while
/// connections keep using TCP.
///
/// A new connection to a peer this gateway has a ticket of resumes with
/// 0-RTT: its first streams leave with the handshake instead of a round
/// trip after it (streams the peer refuses are sent again, see
/// [`EarlyStream`]). Not after a connection that timed out: the path may
/// be broken, and a stream sent in 0-RTT has no TCP fallback, so that
/// handshake is awaited as above.
#[derive(Debug, Clone)]
pub struct TunnelClient {
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<HashMap<SocketAddr, Peer>>>,
    metrics: Arc<Metrics>,
}

/// A connection, and whether its 0-RTT data was accepted (`None` while the
/// handshake runs; `Some(true)` for a full handshake).
#[derive(Debug, Clone)]
struct Tunnel {
    conn: quinn::Connection,
    settled: Settled,
}

#[derive(Debug, Clone)]
enum Peer {
    Up(Tunnel),
    /// A handshake is running; its result arrives on the channel. Callers
    /// wait for it (at most [`FIRST_WAIT`]) only when `wait`: not while
    /// re-probing a peer known to be down.
    Connecting {
        rx: watch::Receiver<Option<Result<Tunnel, String>>>,
        wait: bool,
    },
    /// The last handshake failed; use TCP until then instead of paying the
    /// handshake timeout on every connection.
    DownUntil(tokio::time::Instant),
}

impl TunnelClient {
    pub fn new(endpoint: quinn::Endpoint, metrics: Arc<Metrics>) -> Self {
        Self {
            endpoint,
            conns: Arc::default(),
            metrics,
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Peer>> {
        // Entries are replaced whole, so a poisoned table is still usable.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connection(&self, peer: SocketAddr, timeout: Duration) -> Result<Tunnel, TunnelError> {
        let (mut pending, wait) = {
            let mut conns = self.peers();
            match conns.get(&peer).cloned() {
                Some(Peer::Up(t)) if t.conn.close_reason().is_none() => return Ok(t),
                Some(Peer::DownUntil(t)) if tokio::time::Instant::now() < t => {
                    return Err(TunnelError::Connect(
                        peer,
                        "tunnel recently unreachable".into(),
                    ))
                }
                Some(Peer::Connecting { rx, wait }) => (rx, wait),
                // Known down: probe in the background only.
                Some(Peer::DownUntil(_)) => {
                    let rx = self.spawn_handshake(peer, timeout, false);
                    conns.insert(
                        peer,
                        Peer::Connecting {
                            rx: rx.clone(),
                            wait: false,
                        },
                    );
                    (rx, false)
                }
                // Never tried, or the connection died (the peer closed it,
                // or UDP was cut and the idle timeout closed it).
                previous => {
                    let timed_out = matches!(
                        previous,
                        Some(Peer::Up(t)) if matches!(t.conn.close_reason(), Some(quinn::ConnectionError::TimedOut))
                    );
                    let rx = self.spawn_handshake(peer, timeout, !timed_out);
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
            Ok(Some(Ok(t))) => Ok(t),
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
        early: bool,
    ) -> watch::Receiver<Option<Result<Tunnel, String>>> {
        let (tx, rx) = watch::channel(None);
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.handshake(peer, timeout, early).await;
            match &result {
                Ok(t) => this.up(peer, t.clone()),
                Err(e) => this.down(peer, e),
            }
            tx.send_replace(Some(result.map_err(|e| e.to_string())));
        });
        rx
    }

    fn up(&self, peer: SocketAddr, t: Tunnel) {
        self.peers().insert(peer, Peer::Up(t));
    }

    fn down(&self, peer: SocketAddr, e: &TunnelError) {
        tracing::warn!(%peer, error = %e, retry_in = ?RETRY_AFTER, "QUIC tunnel unavailable; using TCP to this peer");
        self.peers().insert(
            peer,
            Peer::DownUntil(tokio::time::Instant::now() + RETRY_AFTER),
        );
    }

    fn count(&self, kind: &str) {
        self.metrics
            .tunnel_handshakes_total
            .with_label_values(&["client", kind])
            .inc();
    }

    async fn handshake(
        &self,
        peer: SocketAddr,
        timeout: Duration,
        early: bool,
    ) -> Result<Tunnel, TunnelError> {
        // The peer's certificate is checked against the bundle (any gateway
        // identity), not against this name; the name keys the session cache,
        // so each peer is offered only its own tickets.
        let connecting = self
            .endpoint
            .connect(peer, &peer.ip().to_string())
            .map_err(|e| TunnelError::Connect(peer, e.to_string()))?;
        let connecting = if early {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    let (tx, settled) = watch::channel(None);
                    let this = self.clone();
                    let c = conn.clone();
                    tokio::spawn(async move {
                        let ok = accepted.await;
                        if let Some(e) = c.close_reason() {
                            this.down(peer, &TunnelError::Connect(peer, e.to_string()));
                        } else {
                            tracing::info!(%peer, early_data_accepted = ok, "QUIC tunnel resumed with peer gateway");
                            this.count(if ok { "0rtt_accepted" } else { "0rtt_refused" });
                        }
                        tx.send_replace(Some(ok));
                    });
                    return Ok(Tunnel { conn, settled });
                }
                // No ticket for this peer.
                Err(connecting) => connecting,
            }
        } else {
            connecting
        };
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| TunnelError::Connect(peer, "handshake timed out".into()))?
            .map_err(|e| TunnelError::Connect(peer, e.to_string()))?;
        tracing::info!(%peer, "QUIC tunnel connected to peer gateway");
        self.count("full");
        Ok(Tunnel {
            conn,
            settled: watch::channel(Some(true)).1,
        })
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
        let header = encode_header(sni, port)?;
        let t = self.connection(peer, timeout).await?;
        let (mut send, recv) = match t.conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                // A dead cached connection: forget it so the next call reconnects.
                self.peers().remove(&peer);
                return Err(TunnelError::Stream(peer, e.to_string()));
            }
        };
        send.write_all(&header)
            .await
            .map_err(|e| TunnelError::Stream(peer, e.to_string()))?;
        if t.settled.borrow().is_none() {
            return Ok(Box::new(EarlyStream::new(
                t.conn, header, send, recv, t.settled,
            )));
        }
        Ok(Box::new(tokio::io::join(recv, send)))
    }
}
