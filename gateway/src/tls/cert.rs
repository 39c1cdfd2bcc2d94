//! The workload certificate the proxy presents, as a value that rotates.
//!
//! The identity crate's certificate manager owns issuance and rotation; the
//! data plane only reads the newest value from a `watch` channel, so a
//! rotation changes the certificate of new handshakes without touching
//! established connections.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use tokio::sync::watch;

use super::{provider, TlsError};

/// Current certificate chain + key + trust bundle of this proxy.
#[derive(Debug)]
pub struct WorkloadCertificate {
    certified: Arc<CertifiedKey>,
    trust_bundle: Vec<CertificateDer<'static>>,
    spiffe_id: Option<String>,
}

impl WorkloadCertificate {
    /// `chain` starts with the leaf; `trust_bundle` are the federation roots.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust_bundle: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::EmptyChain)?;
        let spiffe_id = super::verify::spiffe_uri(leaf);
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| TlsError::KeyMismatch(e.to_string()))?;
        Ok(Self {
            certified: Arc::new(certified),
            trust_bundle,
            spiffe_id,
        })
    }

    pub fn spiffe_id(&self) -> Option<&str> {
        self.spiffe_id.as_deref()
    }

    pub fn trust_bundle(&self) -> &[CertificateDer<'static>] {
        &self.trust_bundle
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

/// Receives the newest workload certificate (the identity crate's CertManager feeds it).
pub type CertReceiver = watch::Receiver<Arc<WorkloadCertificate>>;

/// Hands rustls whatever certificate is current at handshake time.
#[derive(Debug)]
pub(crate) struct WatchResolver(pub CertReceiver);

impl ResolvesClientCert for WatchResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for WatchResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().certified_key())
    }
}
