//! The certificate authority: roots, per-cluster intermediates and workload leaves.
//!
//! Everything here is built with rcgen (issuing) and x509-parser (reading); no
//! ASN.1 is written by hand.

mod authority;
mod issue;
mod keys;

pub use authority::{Authority, IssuedLeaf, LeafPolicy};
pub use issue::{create_intermediate, create_root, CaMaterial, IntermediateOptions, RootOptions};
pub use keys::{generate_key, load_key, KeyAlgorithm};

use std::path::PathBuf;

use crate::spiffe::SpiffeError;

/// Errors of the CA, its files and its CLI.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; pass --force to replace it (the old key would be lost)")]
    Exists { path: PathBuf },
    #[error("{what}: no PEM `{label}` block found")]
    NoPem { what: String, label: &'static str },
    #[error("{what}: malformed PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{what}: unusable private key: {reason} (PKCS#8 `PRIVATE KEY` PEM is required)")]
    BadKey { what: String, reason: String },
    #[error("{what}: the private key does not match the certificate's public key")]
    KeyMismatch { what: String },
    #[error(
        "{what} is not a CA certificate (basicConstraints CA:TRUE and keyCertSign are required)"
    )]
    NotCa { what: String },
    #[error(
        "key algorithm {0} cannot be generated with the ring crypto provider; \
         create the key elsewhere (e.g. `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072`) \
         and pass it with --key"
    )]
    KeyGenerationUnavailable(KeyAlgorithm),
    #[error("the CA files do not form a chain (check that ca-cert.pem, cert-chain.pem and root-cert.pem come from the same `isthmus ca intermediate` run): {0}")]
    BrokenChain(String),
    #[error("invalid validity: {0}")]
    BadValidity(String),
    #[error(transparent)]
    Spiffe(#[from] SpiffeError),
    #[error("malformed certificate signing request: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {requested}, but the caller is authenticated as {caller}; a workload may only obtain its own identity")]
    CsrIdentityMismatch { requested: String, caller: String },
    #[error("{caller} belongs to another trust domain; this CA signs only for `{trust_domain}`")]
    ForeignTrustDomain {
        caller: String,
        trust_domain: String,
    },
    #[error("the CSR requests a CA certificate; only workload leaves are issued")]
    CsrRequestsCa,
    #[error(
        "the CA certificate expires at {0}; no leaf can be issued anymore, rotate the intermediate"
    )]
    CaExpired(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

impl CaError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Read {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Write {
            path: path.into(),
            source,
        }
    }
}
