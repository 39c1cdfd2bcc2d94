//! Peer verification for mesh mTLS: the peer's chain must lead to a root of the
//! federation trust bundle, and its SPIFFE ID must be one we expect. For mesh
//! traffic the SNI names a service, not the peer, so rustls' server-name check
//! is replaced by the SPIFFE check.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use tokio::sync::watch;

use crate::bundle::TrustBundle;
use crate::spiffe::{SpiffeError, SpiffeId};

/// The live trust bundle; verifiers read the current value at every handshake,
/// so a bundle update (root rotation) needs no new TLS configuration.
pub type BundleWatch = watch::Receiver<Arc<TrustBundle>>;

/// A bundle that never changes (tests, CLI tools).
pub fn static_bundle(bundle: TrustBundle) -> BundleWatch {
    // The receiver keeps returning the last value after the sender is gone.
    watch::channel(Arc::new(bundle)).1
}

/// A bundle that starts as `initial` (the operator's bootstrap root file) and
/// then follows the roots the CA returned with our latest certificate, as
/// Istio's agent does: after a root rotation the old root is no longer
/// trusted for talking to the CA, and the new one is trusted before the
/// control plane's own certificate moves to it. Needs a tokio runtime.
pub fn follow_issued_roots(
    initial: TrustBundle,
    mut own: crate::manager::CertWatch,
) -> BundleWatch {
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(async move {
        loop {
            let roots = own
                .borrow_and_update()
                .as_ref()
                .map(|c| c.roots().to_vec())
                .unwrap_or_default();
            if !roots.is_empty() {
                let mut next = TrustBundle::new();
                let added: Result<Vec<_>, _> = roots.into_iter().map(|r| next.add_der(r)).collect();
                match added {
                    Ok(_) if **tx.borrow() != next => {
                        tracing::info!(roots = ?next.subjects(), "CA trust follows the roots of the latest certificate");
                        tx.send_replace(Arc::new(next));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the CA returned an unusable root; keeping the current CA trust")
                    }
                }
            }
            tokio::select! {
                r = own.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

#[derive(thiserror::Error)]
pub enum VerifyError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error(
        "the trust bundle is empty; no peer can be verified (has the ROOTCA bundle been received?)"
    )]
    EmptyBundle,
    #[error("peer certificate is malformed: {0}")]
    BadEncoding(String),
    #[error("peer certificate chain rejected: {0} (check the peer's root is in the trust bundle, and the certificate's validity dates)")]
    Chain(webpki::Error),
    #[error("peer certificate has no usable SPIFFE identity: {0}")]
    Identity(#[from] SpiffeError),
    #[error("peer {got} is from trust domain `{}`, which is not accepted here (accepted: {expected})", got.trust_domain())]
    ForeignTrustDomain { got: SpiffeId, expected: String },
    #[error("peer identity {got} is not among the expected identities ({expected})")]
    UnexpectedIdentity { got: SpiffeId, expected: String },
}

// rustls prints a CertificateError::Other with `{:?}`; make that the operator-facing text.
impl std::fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// Which peer identities are acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any workload of these trust domains.
    AnyInTrustDomains(BTreeSet<String>),
    /// Exactly these identities (e.g. the SANs a cluster's `UpstreamTlsContext` expects).
    Exactly(BTreeSet<SpiffeId>),
}

impl PeerPolicy {
    pub fn trust_domain(td: &str) -> Self {
        Self::AnyInTrustDomains(BTreeSet::from([td.to_owned()]))
    }

    pub fn exactly(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::Exactly(ids.into_iter().collect())
    }

    pub fn check(&self, id: &SpiffeId) -> Result<(), VerifyError> {
        match self {
            PeerPolicy::AnyInTrustDomains(domains) => {
                if domains.contains(id.trust_domain()) {
                    Ok(())
                } else {
                    Err(VerifyError::ForeignTrustDomain {
                        got: id.clone(),
                        expected: join(domains.iter()),
                    })
                }
            }
            PeerPolicy::Exactly(ids) => {
                if ids.contains(id) {
                    Ok(())
                } else if !ids.iter().any(|e| e.trust_domain() == id.trust_domain()) {
                    Err(VerifyError::ForeignTrustDomain {
                        got: id.clone(),
                        expected: join(ids.iter().map(|i| i.trust_domain())),
                    })
                } else {
                    Err(VerifyError::UnexpectedIdentity {
                        got: id.clone(),
                        expected: join(ids.iter()),
                    })
                }
            }
        }
    }
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Which extended key usage the peer's leaf must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    Server,
    Client,
}

/// Verifies `end_entity` (+ `intermediates`) against the bundle at time `now`
/// and returns the peer's SPIFFE ID. The identity is not yet checked against a policy.
pub fn verify_chain(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, VerifyError> {
    if bundle.is_empty() {
        return Err(VerifyError::EmptyBundle);
    }
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| VerifyError::BadEncoding(e.to_string()))?;
    let anchors = bundle.anchors();
    let usage = match role {
        PeerRole::Server => webpki::KeyUsage::server_auth(),
        PeerRole::Client => webpki::KeyUsage::client_auth(),
    };
    cert.verify_for_usage(algs.all, &anchors, intermediates, now, usage, None, None)
        .map_err(VerifyError::Chain)?;
    Ok(SpiffeId::from_cert_der(end_entity)?)
}

fn default_algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    let cert_error = match &e {
        VerifyError::NoCertificate => return rustls::Error::NoCertificatesPresented,
        VerifyError::BadEncoding(_) => CertificateError::BadEncoding,
        VerifyError::Chain(inner) => match inner {
            webpki::Error::CertExpired { .. } => CertificateError::Expired,
            webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
            webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
            webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
            _ => CertificateError::Other(OtherError(Arc::new(e))),
        },
        _ => CertificateError::Other(OtherError(Arc::new(e))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

/// Client side: verifies the server against the bundle and the expected identities.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: BundleWatch,
    policy: PeerPolicy,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: BundleWatch, policy: PeerPolicy) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            policy,
            algs: default_algs(),
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundle = Arc::clone(&self.bundle.borrow());
        let id = verify_chain(
            &bundle,
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
            &self.algs,
        )
        .map_err(to_rustls)?;
        self.policy.check(&id).map_err(to_rustls)?;
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server side: verifies client certificates against the bundle and the policy.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: BundleWatch,
    policy: PeerPolicy,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// `mandatory = false` lets clients without a certificate through (the CA
    /// does this for bootstrap-token callers); a certificate that is presented
    /// is still fully verified.
    pub fn new(bundle: BundleWatch, policy: PeerPolicy, mandatory: bool) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            policy,
            mandatory,
            algs: default_algs(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a workload has exactly one certificate to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = Arc::clone(&self.bundle.borrow());
        let id = verify_chain(
            &bundle,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
            &self.algs,
        )
        .map_err(to_rustls)?;
        self.policy.check(&id).map_err(to_rustls)?;
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The SPIFFE ID of the peer of an established rustls connection (whose chain
/// the verifiers above have already checked).
pub fn peer_identity(conn: &rustls::CommonState) -> Result<SpiffeId, VerifyError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(VerifyError::NoCertificate)?;
    Ok(SpiffeId::from_cert_der(leaf)?)
}
