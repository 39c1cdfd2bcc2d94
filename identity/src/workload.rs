//! A workload's own certificate: built from the locally generated key and the
//! chain the CA returned, checked before it is ever served.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pem::certs_from_pem;
use crate::spiffe::{SpiffeError, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadCertError {
    #[error("the CA returned an empty certificate chain")]
    EmptyChain,
    #[error("the CA returned an unreadable chain: {0}")]
    BadChain(String),
    #[error("the issued certificate has no usable SPIFFE ID: {0}")]
    Identity(#[from] SpiffeError),
    #[error("the CA issued {got}, but {wanted} was requested")]
    WrongIdentity {
        got: Box<SpiffeId>,
        wanted: Box<SpiffeId>,
    },
    #[error(
        "the issued certificate does not carry our public key (the CA answered another request?)"
    )]
    KeyMismatch,
    #[error("the issued certificate is already expired (not after {0:?}); check the CA's and this host's clocks")]
    AlreadyExpired(SystemTime),
    #[error("the private key is not usable for TLS: {0}")]
    Key(rustls::Error),
}

/// The current certificate of a workload, ready for rustls.
pub struct WorkloadCert {
    identity: SpiffeId,
    /// Leaf first, then intermediates (the root is not sent to peers).
    chain: Vec<CertificateDer<'static>>,
    /// Root(s) that closed the chain returned by the CA.
    roots: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    certified: Arc<CertifiedKey>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    received_at: SystemTime,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Checks the CA's answer (`chain_pem`: leaf first, root last) against the
    /// identity we asked for and the key we generated.
    pub fn from_issued(
        wanted: &SpiffeId,
        key_pkcs8_der: Vec<u8>,
        public_key_raw: &[u8],
        chain_pem: &[String],
    ) -> Result<Self, WorkloadCertError> {
        let mut ders = Vec::new();
        for pem in chain_pem {
            ders.extend(
                certs_from_pem(pem, "CA response")
                    .map_err(|e| WorkloadCertError::BadChain(e.to_string()))?,
            );
        }
        let leaf = ders.first().ok_or(WorkloadCertError::EmptyChain)?;
        let (_, parsed) = X509Certificate::from_der(leaf)
            .map_err(|e| WorkloadCertError::BadChain(e.to_string()))?;
        let identity = SpiffeId::from_cert(&parsed)?;
        if &identity != wanted {
            return Err(WorkloadCertError::WrongIdentity {
                got: Box::new(identity),
                wanted: Box::new(wanted.clone()),
            });
        }
        if parsed.public_key().subject_public_key.data.as_ref() != public_key_raw {
            return Err(WorkloadCertError::KeyMismatch);
        }
        let not_before = asn1_to_system(parsed.validity().not_before.timestamp());
        let not_after = asn1_to_system(parsed.validity().not_after.timestamp());
        let now = SystemTime::now();
        if not_after <= now {
            return Err(WorkloadCertError::AlreadyExpired(not_after));
        }
        let serial = parsed.raw_serial_as_string();

        // Self-signed trailing certificates are roots: peers have them in their bundle.
        let mut chain = Vec::with_capacity(ders.len());
        let mut roots = Vec::new();
        for (i, der) in ders.into_iter().enumerate() {
            let self_signed = i > 0
                && X509Certificate::from_der(&der)
                    .map(|(_, c)| c.subject() == c.issuer())
                    .unwrap_or(false);
            if self_signed {
                roots.push(der);
            } else {
                chain.push(der);
            }
        }
        let key = PrivatePkcs8KeyDer::from(key_pkcs8_der);
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(key.clone_key()))
                .map_err(WorkloadCertError::Key)?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
        Ok(Self {
            identity,
            chain,
            roots,
            key,
            certified,
            serial,
            not_before,
            not_after,
            received_at: now,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// For listeners that need the key itself (e.g. to build other TLS stacks).
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    pub fn is_expired_at(&self, t: SystemTime) -> bool {
        t >= self.not_after
    }
}

fn asn1_to_system(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(unix.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(unix.unsigned_abs())
    }
}
