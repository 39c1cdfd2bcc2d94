//! Accepting tunnel connections and dispatching each stream to the local
//! listener it names, as if it had arrived on that listener's TCP port.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::header::read_header;
use super::TunnelVerifier;
use crate::listener::manager::ListenersByPort;
use crate::metrics::Metrics;
use crate::proxy::connection::{tunnel_stream, ProxyContext};
use crate::tls::{peer_identity, CertReceiver};

/// Serves the tunnel until `stop` is cancelled. `cert` is the gateway's
/// certificate watch, whose trust resumed identities are checked against.
pub async fn serve(
    endpoint: quinn::Endpoint,
    cert: CertReceiver,
    listeners: watch::Receiver<ListenersByPort>,
    ctx: ProxyContext,
    stop: CancellationToken,
) {
    let verifier = Arc::new(TunnelVerifier::new(cert));
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let (listeners, ctx, stop) = (listeners.clone(), ctx.clone(), stop.clone());
        let verifier = verifier.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match accept(incoming, &verifier, &ctx.metrics).await {
                Ok(conn) => connection(conn, listeners, ctx, stop).await,
                Err(e) => {
                    tracing::warn!(peer = %remote, error = %e, "QUIC tunnel handshake failed (check the peer gateway's certificate and trust bundle)")
                }
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
}

/// A peer connection whose streams may be served. A resumed one is
/// returned at once (0.5-RTT), so the streams the peer sent in 0-RTT are
/// served without waiting for its handshake to finish; its identity comes
/// from the session ticket and is checked against the current trust
/// first. A full handshake is awaited: until it ends, the peer has
/// presented no certificate.
pub async fn accept(
    incoming: quinn::Incoming,
    verifier: &TunnelVerifier,
    metrics: &Metrics,
) -> Result<quinn::Connection, String> {
    let mut connecting = incoming.accept().map_err(|e| e.to_string())?;
    // The ClientHello has been processed: a resumed session's identity is known.
    connecting
        .handshake_data()
        .await
        .map_err(|e| e.to_string())?;
    let count = |kind: &str| {
        metrics
            .tunnel_handshakes_total
            .with_label_values(&["server", kind])
            .inc()
    };
    let (conn, handshake) = match connecting.into_0rtt() {
        Ok(pair) => pair,
        // quinn always converts incoming connections; kept total.
        Err(connecting) => {
            let conn = connecting.await.map_err(|e| e.to_string())?;
            count("full");
            return Ok(conn);
        }
    };
    if let Some(chain) = chain_of(&conn) {
        if let Err(e) = verifier.recheck_client(&chain) {
            conn.close(quinn::VarInt::from_u32(1), b"identity no longer trusted");
            return Err(format!("resumed session refused: {e}"));
        }
        count("resumed");
        return Ok(conn);
    }
    handshake.await;
    if let Some(e) = conn.close_reason() {
        return Err(e.to_string());
    }
    count("full");
    Ok(conn)
}

fn chain_of(conn: &quinn::Connection) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    conn.peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|b| *b)
}

async fn connection(
    conn: quinn::Connection,
    listeners: watch::Receiver<ListenersByPort>,
    ctx: ProxyContext,
    stop: CancellationToken,
) {
    let remote = conn.remote_address();
    let identity = chain_of(&conn).and_then(|certs| peer_identity(Some(certs.as_slice())));
    tracing::info!(peer = %remote, identity = ?identity, "QUIC tunnel connection from peer gateway");
    loop {
        let (send, mut recv) = tokio::select! {
            _ = stop.cancelled() => return,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = %remote, error = %e, "QUIC tunnel connection closed");
                    return;
                }
            },
        };
        let (listeners, ctx) = (listeners.clone(), ctx.clone());
        tokio::spawn(async move {
            let (sni, port) = match read_header(&mut recv).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(peer = %remote, error = %e, "bad tunnel stream header");
                    return;
                }
            };
            let Some(listener) = listeners.borrow().get(&port).cloned() else {
                tracing::warn!(peer = %remote, port, %sni, "tunnel stream names a port without a listener");
                return;
            };
            stream(listener, ctx, remote, sni, port, send, recv).await;
        });
    }
}

async fn stream(
    listener: Arc<crate::state::ListenerRuntime>,
    ctx: ProxyContext,
    remote: SocketAddr,
    sni: String,
    port: u16,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let io = Box::new(tokio::io::join(recv, send));
    tunnel_stream(listener, ctx, io, remote, sni, port).await;
}
