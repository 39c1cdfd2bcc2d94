//! Key generation and loading for CA and workload keys.

use std::fmt;

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use super::CaError;

/// Key algorithms rustls (with the ring provider) can verify in TLS handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default, as in Istio).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with PKCS#1 v1.5 SHA-256 signatures; ring cannot generate RSA keys,
    /// so an existing PKCS#8 key must be supplied.
    Rsa,
}

impl KeyAlgorithm {
    fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::Rsa => "RSA",
        })
    }
}

/// Generates a fresh key pair; the private key never leaves this process
/// unless the caller writes it out.
pub fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, CaError> {
    match KeyPair::generate_for(alg.signature_algorithm()) {
        Ok(key) => Ok(key),
        Err(rcgen::Error::KeyGenerationUnavailable) => Err(CaError::KeyGenerationUnavailable(alg)),
        Err(e) => Err(CaError::Rcgen(e)),
    }
}

/// Loads a PKCS#8 private key from PEM; `what` names the source in errors.
pub fn load_key(pem: &str, what: &str) -> Result<KeyPair, CaError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CaError::NoPem {
            what: what.to_owned(),
            label: "PRIVATE KEY",
        },
        other => CaError::BadPem {
            what: what.to_owned(),
            reason: other.to_string(),
        },
    })?;
    KeyPair::try_from(&der).map_err(|e| CaError::BadKey {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}
