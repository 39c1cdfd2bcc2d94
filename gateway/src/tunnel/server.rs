//! Accepting tunnel connections and dispatching each stream to the local
//! listener it names, as if it had arrived on that listener's TCP port.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::header::read_header;
use crate::listener::manager::ListenersByPort;
use crate::proxy::connection::{tunnel_stream, ProxyContext};
use crate::tls::peer_identity;

/// Serves the tunnel until `stop` is cancelled.
pub async fn serve(
    endpoint: quinn::Endpoint,
    listeners: watch::Receiver<ListenersByPort>,
    ctx: ProxyContext,
    stop: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let (listeners, ctx, stop) = (listeners.clone(), ctx.clone(), stop.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => connection(conn, listeners, ctx, stop).await,
                Err(e) => {
                    tracing::warn!(peer = %remote, error = %e, "QUIC tunnel handshake failed (check the peer gateway's certificate and trust bundle)")
                }
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
}

async fn connection(
    conn: quinn::Connection,
    listeners: watch::Receiver<ListenersByPort>,
    ctx: ProxyContext,
    stop: CancellationToken,
) {
    let remote = conn.remote_address();
    let identity = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| peer_identity(Some(certs.as_slice())));
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
