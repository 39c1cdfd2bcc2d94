//! Peer verification for the QUIC tunnel that follows the gateway's current
//! trust bundle.
//!
//! The tunnel's rustls configurations live as long as the endpoint, so a
//! verifier built once at start-up would keep the roots of the first
//! certificate forever: after a root rotation moved the peers to a new root,
//! every new tunnel handshake would fail with `UnknownIssuer`. Instead the
//! trust is read from the certificate watch at each handshake (the binary
//! republishes the certificate with the roots it came with plus the pushed
//! `ROOTCA` bundle whenever either changes), the way the TCP mTLS path
//! rebuilds its configs when `ROOTCA` changes. Established connections keep
//! the trust they were verified with.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::tls::{provider, CertReceiver, SpiffeVerifier, WorkloadCertificate};

/// Verifies tunnel peers (any SPIFFE identity) against the trust bundle of
/// the certificate that is current when the handshake runs.
#[derive(Debug)]
pub struct TunnelVerifier {
    cert: CertReceiver,
    /// The verifier of the last certificate seen, so the anchors are parsed
    /// once per certificate rather than once per handshake.
    cache: Mutex<Option<(Arc<WorkloadCertificate>, Arc<SpiffeVerifier>)>>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl TunnelVerifier {
    pub fn new(cert: CertReceiver) -> Self {
        Self {
            cert,
            cache: Mutex::new(None),
            algs: provider().signature_verification_algorithms,
        }
    }

    /// The verifier for the current trust bundle. An unusable bundle fails
    /// this handshake only; the next certificate may fix it.
    fn current(&self) -> Result<Arc<SpiffeVerifier>, rustls::Error> {
        let cert = self.cert.borrow().clone();
        // A poisoned cache holds nothing a panic could have left half-written
        // (it is replaced whole), so its value is still usable.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, v)) = cache.as_ref() {
            if Arc::ptr_eq(seen, &cert) {
                return Ok(v.clone());
            }
        }
        let verifier = SpiffeVerifier::new(cert.trust_bundle(), Vec::new()).map_err(|e| {
            tracing::warn!(error = %e, "the gateway's trust bundle is unusable; refusing this tunnel handshake");
            rustls::Error::General(format!("tunnel trust bundle: {e}"))
        })?;
        let verifier = Arc::new(verifier);
        *cache = Some((cert, verifier.clone()));
        Ok(verifier)
    }

    /// Checks a client's chain again against the current trust and time:
    /// for an identity restored from a session ticket, which was verified
    /// when the ticket was issued, not now.
    pub fn recheck_client(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.current()?
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

impl ServerCertVerifier for TunnelVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for TunnelVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: they would have to outlive the handshake's trust, and
    /// the tunnel's own client always presents its one certificate.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
