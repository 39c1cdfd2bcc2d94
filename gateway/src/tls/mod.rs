//! TLS for the mesh: origination (client), termination (server), SPIFFE
//! verification, and ClientHello inspection for SNI passthrough.

mod cert;
pub mod sni;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

pub(crate) use cert::WatchResolver;
pub use cert::{CertReceiver, WorkloadCertificate};
pub use verify::{spiffe_uri, SpiffeVerifier};

use crate::config::{DownstreamTls, SanMatcher, UpstreamTls, Validation};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate chain is empty")]
    EmptyChain,
    #[error("trust bundle is empty; check that the control plane sends the ROOTCA secret")]
    EmptyTrustBundle,
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    #[error("private key does not match the certificate or is unsupported: {0}")]
    KeyMismatch(String),
    #[error("SDS secret {0:?} has not been received from the control plane yet")]
    MissingSecret(String),
    #[error("this proxy has no workload certificate (no certificate source configured), but the config asks for SDS \"default\"")]
    NoWorkloadCertificate,
    #[error("invalid SNI {0:?}")]
    BadSni(String),
    #[error("TLS configuration rejected by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider the data plane uses (ring, per the workspace stack).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Looks up validation-context secrets by SDS name.
pub trait SecretLookup {
    fn roots(&self, name: &str) -> Option<(Vec<Vec<u8>>, Vec<SanMatcher>)>;
}

fn verifier(
    validation: &Validation,
    secrets: &dyn SecretLookup,
) -> Result<SpiffeVerifier, TlsError> {
    let mut roots: Vec<Vec<u8>> = validation.inline_roots.clone();
    let mut sans = validation.san_matchers.clone();
    if let Some(name) = &validation.secret {
        let (r, s) = secrets
            .roots(name)
            .ok_or_else(|| TlsError::MissingSecret(name.clone()))?;
        roots.extend(r);
        sans.extend(s);
    }
    let ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    SpiffeVerifier::new(&ders, sans)
}

/// Client config for an upstream cluster's `UpstreamTlsContext`.
pub fn client_config(
    tls: &UpstreamTls,
    secrets: &dyn SecretLookup,
    cert: Option<&CertReceiver>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = Arc::new(verifier(&tls.validation, secrets)?);
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.cert_secret {
        Some(_) => {
            let cert = cert.ok_or(TlsError::NoWorkloadCertificate)?;
            builder.with_client_cert_resolver(Arc::new(WatchResolver(cert.clone())))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = tls.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Server config for a filter chain's `DownstreamTlsContext`.
pub fn server_config(
    tls: &DownstreamTls,
    secrets: &dyn SecretLookup,
    cert: Option<&CertReceiver>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert = cert.ok_or(TlsError::NoWorkloadCertificate)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.validation {
        Some(v) => {
            let mut verifier = verifier(v, secrets)?;
            if !tls.require_client_certificate {
                verifier = verifier.optional_client_cert();
            }
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(WatchResolver(cert.clone())));
    config.alpn_protocols = tls.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The server name to put in the ClientHello.
pub fn server_name(
    sni: Option<&str>,
    addr: std::net::IpAddr,
) -> Result<rustls::pki_types::ServerName<'static>, TlsError> {
    match sni {
        Some(s) => rustls::pki_types::ServerName::try_from(s.to_string())
            .map_err(|_| TlsError::BadSni(s.to_string())),
        None => Ok(rustls::pki_types::ServerName::IpAddress(addr.into())),
    }
}

/// The SPIFFE ID of the peer's leaf certificate, if any.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    spiffe_uri(certs?.first()?)
}
