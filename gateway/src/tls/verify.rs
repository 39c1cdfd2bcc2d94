//! Peer verification for mesh mTLS. Chain building and SPIFFE ID extraction
//! are `isthmus-identity`'s ([`verify_chain`]); what stays here is the glue
//! specific to xDS: the trust anchors come from SDS secrets / inline
//! validation contexts, and the accepted identities are Envoy SAN matchers.
//! The SNI of a mesh connection names a service port, not a DNS identity, so
//! rustls' default hostname check does not apply.

use std::sync::Arc;

use isthmus_identity::verify::{verify_chain, PeerRole};
use isthmus_identity::{SpiffeId, TrustBundle, VerifyError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{provider, TlsError};
use crate::config::SanMatcher;

/// The SPIFFE ID (URI form) of a DER certificate, if it carries exactly one.
pub fn spiffe_uri(cert: &CertificateDer<'_>) -> Option<String> {
    SpiffeId::from_cert_der(cert.as_ref())
        .ok()
        .map(|id| id.to_uri())
}

/// Verifies a peer chain against trust anchors and SPIFFE SAN matchers.
#[derive(Debug)]
pub struct SpiffeVerifier {
    bundle: TrustBundle,
    subjects: Vec<DistinguishedName>,
    sans: Vec<SanMatcher>,
    require_client_cert: bool,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    pub fn new(roots: &[CertificateDer<'_>], sans: Vec<SanMatcher>) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::EmptyTrustBundle);
        }
        let mut bundle = TrustBundle::new();
        for (i, r) in roots.iter().enumerate() {
            bundle
                .add_der(r.clone().into_owned())
                .map_err(|e| TlsError::BadCertificate(format!("trust anchor {i}: {e}")))?;
        }
        let subjects = bundle
            .anchors()
            .iter()
            // webpki keeps the Name's contents without its outer SEQUENCE;
            // the CertificateRequest needs the whole DER Name, or OpenSSL
            // (and so Envoy) clients abort with `parse_ca_names`.
            .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
            .collect();
        Ok(Self {
            bundle,
            subjects,
            sans,
            require_client_cert: true,
            algs: provider().signature_verification_algorithms,
        })
    }

    /// For PERMISSIVE-style TLS servers that accept clients without certificates.
    pub fn optional_client_cert(mut self) -> Self {
        self.require_client_cert = false;
        self
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<(), rustls::Error> {
        let id = verify_chain(
            &self.bundle,
            end_entity,
            intermediates,
            now,
            role,
            &self.algs,
        )
        .map_err(to_rustls)?;
        if self.sans.is_empty() {
            return Ok(());
        }
        let uri = id.to_uri();
        if self.sans.iter().any(|m| m.matches(&uri)) {
            Ok(())
        } else {
            tracing::debug!(peer = %uri, expected = ?self.sans, "peer SPIFFE identity not accepted");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    let ce = match e {
        VerifyError::NoCertificate => return rustls::Error::NoCertificatesPresented,
        VerifyError::BadEncoding(_) => CertificateError::BadEncoding,
        VerifyError::Chain(webpki::Error::CertExpired { .. }) => CertificateError::Expired,
        VerifyError::Chain(webpki::Error::CertNotValidYet { .. }) => CertificateError::NotValidYet,
        VerifyError::Chain(webpki::Error::UnknownIssuer) => CertificateError::UnknownIssuer,
        VerifyError::Chain(webpki::Error::InvalidSignatureForPublicKey) => {
            CertificateError::BadSignature
        }
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, PeerRole::Server)?;
        Ok(ServerCertVerified::assertion())
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

impl ClientCertVerifier for SpiffeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.require_client_cert
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, PeerRole::Client)?;
        Ok(ClientCertVerified::assertion())
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
