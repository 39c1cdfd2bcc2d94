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

mod client;
mod early;
mod header;
mod server;
mod sessions;
mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use client::{TunnelClient, FIRST_WAIT};
pub use header::{encode_header, read_header, write_header, HeaderError, MAX_SNI};
pub use server::{accept, serve};
pub use trust::TunnelVerifier;

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
    // Resumption and 0-RTT, safely: stateful single-use tickets (replayed
    // early data finds no ticket), dropped whenever this gateway's
    // certificate or trust changes (a resumed handshake verifies no
    // certificate), and the identity restored from a ticket is checked
    // against the current trust again before a stream is served
    // (`server::accept`). See `sessions`.
    server.session_storage = Arc::new(sessions::ServerSessions::new(cert));
    server.send_tls13_tickets = 1;
    server.max_early_data_size = u32::MAX;
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(WatchResolver(cert.clone())));
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.resumption =
        rustls::client::Resumption::store(Arc::new(sessions::ClientSessions::new(cert)));
    client.enable_early_data = true;
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
