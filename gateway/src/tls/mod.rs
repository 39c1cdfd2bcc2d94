//! TLS for the mesh: origination (client), termination (server), SPIFFE
//! verification, and ClientHello inspection for SNI passthrough.

mod cert;
mod credential;
pub mod mesh_roots;
mod origination;
pub mod sni;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

pub(crate) use cert::WatchResolver;
pub use cert::{CertReceiver, WorkloadCertificate};
pub use credential::{CredentialSummary, ServerCredential};
pub use verify::{spiffe_uri, SpiffeVerifier};

use crate::config::{DownstreamTls, SanMatcher, ServerCertSource, UpstreamTls, Validation};

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
    #[error("server credential: {0}")]
    Credential(String),
    #[error("client certificate verifier: {0}")]
    ClientVerifier(String),
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

    /// A `tls_certificate` secret (a Gateway's `credentialName`).
    fn certificate(&self, _name: &str) -> Option<ServerCredential> {
        None
    }
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
    if let Some(o) = &tls.origination {
        return origination::client_config(tls, o, secrets);
    }
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

/// Server config for a filter chain's `DownstreamTlsContext`. May read
/// certificate files named by the context: call from a blocking context.
pub fn server_config(
    tls: &DownstreamTls,
    secrets: &dyn SecretLookup,
    cert: Option<&CertReceiver>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match &tls.certificate {
        ServerCertSource::Workload => {
            let cert = cert.ok_or(TlsError::NoWorkloadCertificate)?;
            Arc::new(WatchResolver(cert.clone()))
        }
        ServerCertSource::Sds(name) => {
            let cred = secrets
                .certificate(name)
                .ok_or_else(|| TlsError::MissingSecret(name.clone()))?;
            Arc::new(credential::FixedResolver(cred.certified_key()))
        }
        ServerCertSource::Files { chain, key } => Arc::new(credential::FixedResolver(
            ServerCredential::from_files(chain, key)?.certified_key(),
        )),
        ServerCertSource::Inline(cred) => Arc::new(credential::FixedResolver(cred.certified_key())),
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.validation {
        Some(v) if tls.verifies_mesh_peers() => {
            let mut verifier = verifier(v, secrets)?;
            if !tls.require_client_certificate {
                verifier = verifier.optional_client_cert();
            }
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
        Some(v) => builder.with_client_cert_verifier(user_client_verifier(tls, v, secrets)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = tls.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Ordinary X.509 client certificates checked against a user CA (Gateway
/// MUTUAL / OPTIONAL_MUTUAL): the CA from SDS (`NAME-cacert`), inline, or a
/// file on the gateway.
fn user_client_verifier(
    tls: &DownstreamTls,
    v: &Validation,
    secrets: &dyn SecretLookup,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut ders: Vec<CertificateDer<'static>> = v
        .inline_roots
        .iter()
        .map(|r| CertificateDer::from(r.clone()))
        .collect();
    if let Some(name) = &v.secret {
        let (r, _) = secrets
            .roots(name)
            .ok_or_else(|| TlsError::MissingSecret(name.clone()))?;
        ders.extend(r.into_iter().map(CertificateDer::from));
    }
    if let Some(path) = &tls.ca_file {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| {
            TlsError::ClientVerifier(format!(
                "cannot read caCertificates file {}: {e}",
                path.display()
            ))
        })?;
        for c in CertificateDer::pem_slice_iter(&pem) {
            ders.push(c.map_err(|e| {
                TlsError::ClientVerifier(format!(
                    "caCertificates file {} is not valid PEM: {e}",
                    path.display()
                ))
            })?);
        }
    }
    for (i, d) in ders.into_iter().enumerate() {
        roots
            .add(d)
            .map_err(|e| TlsError::BadCertificate(format!("client CA {i}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::ClientVerifier(
            "the client CA bundle is empty".to_string(),
        ));
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(provider()),
    );
    let builder = if tls.require_client_certificate {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| TlsError::ClientVerifier(e.to_string()))
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
