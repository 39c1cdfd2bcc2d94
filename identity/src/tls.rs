//! rustls configurations whose certificate is read from the certificate
//! manager's watch at every handshake: a rotation reaches new connections at
//! once, established connections keep the keys they negotiated, and no
//! listener or pool has to be rebuilt.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::manager::CertWatch;
use crate::verify::{BundleWatch, PeerPolicy, SpiffeClientVerifier, SpiffeServerVerifier};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Hands rustls whatever certificate is current when the handshake happens.
#[derive(Debug, Clone)]
pub struct CurrentCertResolver {
    certs: CertWatch,
}

impl CurrentCertResolver {
    pub fn new(certs: CertWatch) -> Arc<Self> {
        Arc::new(Self { certs })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.certs.borrow().as_ref().map(|c| c.certified_key())
    }
}

impl ResolvesServerCert for CurrentCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CurrentCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.certs.borrow().is_some()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Session resumption would skip certificate verification and carry over the
/// identity of the certificate the first session was made with, possibly long
/// expired or rotated; every mesh connection verifies the peer afresh instead.
fn disable_server_resumption(config: &mut ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

/// A server configuration for mesh mTLS: our current certificate, and clients
/// verified against the bundle and `clients`. With `require_client_cert = false`
/// clients without a certificate are let through (for the CA's bootstrap path).
pub fn server_config(
    certs: CertWatch,
    bundle: BundleWatch,
    clients: PeerPolicy,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(SpiffeClientVerifier::new(
            bundle,
            clients,
            require_client_cert,
        ))
        .with_cert_resolver(CurrentCertResolver::new(certs));
    disable_server_resumption(&mut config);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration for mesh mTLS: servers verified against the bundle
/// and `servers`; our current certificate offered when `certs` is given.
pub fn client_config(
    certs: Option<CertWatch>,
    bundle: BundleWatch,
    servers: PeerPolicy,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(bundle, servers));
    let mut config = match certs {
        Some(certs) => builder.with_client_cert_resolver(CurrentCertResolver::new(certs)),
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
