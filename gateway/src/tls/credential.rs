//! User server certificates (Istio Gateway `credentialName` and
//! `serverCertificate`/`privateKey` files): a PEM chain and key checked
//! once when received, then handed to rustls as is.
//!
//! Unlike the workload certificate these never rotate by themselves: a new
//! SDS version (or a new listener) replaces the whole credential, and a
//! malformed one is refused before it can replace the last good one.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;

use super::{provider, TlsError};

/// What an operator needs to recognise a credential in a config dump
/// (never the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialSummary {
    pub subject: String,
    pub dns_names: Vec<String>,
    pub not_after: String,
    pub chain_len: usize,
}

/// A certificate chain and its private key, validated to match.
#[derive(Clone)]
pub struct ServerCredential {
    certified: Arc<CertifiedKey>,
    summary: CredentialSummary,
}

impl ServerCredential {
    /// Parses a PEM chain (leaf first) and a PEM private key (PKCS#8,
    /// PKCS#1 or SEC1). `what` names the source in errors.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Self, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                TlsError::Credential(format!("{what}: certificate chain is not valid PEM: {e}"))
            })?;
        if chain.is_empty() {
            return Err(TlsError::Credential(format!(
                "{what}: no CERTIFICATE block in the certificate chain"
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            TlsError::Credential(format!(
                "{what}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"
            ))
        })?;
        Self::from_der(chain, key, what)
    }

    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        what: &str,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::EmptyChain)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
            TlsError::Credential(format!("{what}: leaf certificate does not parse: {e}"))
        })?;
        let dns_names = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let summary = CredentialSummary {
            subject: parsed.subject().to_string(),
            dns_names,
            not_after: parsed.validity().not_after.to_string(),
            chain_len: chain.len(),
        };
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            TlsError::Credential(format!(
                "{what}: private key does not match the certificate or is unsupported: {e}"
            ))
        })?;
        Ok(Self {
            certified: Arc::new(certified),
            summary,
        })
    }

    /// Reads both PEM files. Blocking: call from a blocking context.
    pub fn from_files(chain: &std::path::Path, key: &std::path::Path) -> Result<Self, TlsError> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| {
                TlsError::Credential(format!(
                    "cannot read {what} file {}: {e} (the path is on the gateway's own filesystem)",
                    p.display()
                ))
            })
        };
        let chain_pem = read(chain, "serverCertificate")?;
        let key_pem = read(key, "privateKey")?;
        Self::from_pem(
            &chain_pem,
            &key_pem,
            &format!("{} + {}", chain.display(), key.display()),
        )
    }

    pub fn summary(&self) -> &CredentialSummary {
        &self.summary
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }
}

// The key is bound to the chain (checked in `from_der`), so equal chains
// mean equal credentials.
impl PartialEq for ServerCredential {
    fn eq(&self, other: &Self) -> bool {
        self.chain() == other.chain()
    }
}

impl Eq for ServerCredential {}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredential")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl Serialize for ServerCredential {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.summary.serialize(s)
    }
}

/// Hands rustls one fixed credential. SNI selection happens one level up,
/// by filter chain (one chain per Gateway server, as Istio emits them).
#[derive(Debug)]
pub(crate) struct FixedResolver(pub Arc<CertifiedKey>);

impl ResolvesServerCert for FixedResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn parses_pem_and_summarises() {
        let (c, k) = self_signed("a.example.com");
        let cred = ServerCredential::from_pem(c.as_bytes(), k.as_bytes(), "test").expect("valid");
        assert_eq!(cred.summary().dns_names, vec!["a.example.com".to_string()]);
        assert_eq!(cred.summary().chain_len, 1);
        let again = ServerCredential::from_pem(c.as_bytes(), k.as_bytes(), "test").expect("valid");
        assert_eq!(cred, again);
        assert!(!format!("{cred:?}").contains("PRIVATE"));
    }

    #[test]
    fn mismatched_key_and_garbage_are_refused_with_the_source_named() {
        let (c, _) = self_signed("a.example.com");
        let (_, other_key) = self_signed("b.example.com");
        let err = ServerCredential::from_pem(c.as_bytes(), other_key.as_bytes(), "secret x")
            .expect_err("mismatch");
        assert!(err.to_string().contains("secret x"), "{err}");
        assert!(err.to_string().contains("does not match"), "{err}");
        let err = ServerCredential::from_pem(b"nonsense", other_key.as_bytes(), "secret y")
            .expect_err("no cert");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let err =
            ServerCredential::from_pem(c.as_bytes(), b"nope", "secret z").expect_err("no key");
        assert!(err.to_string().contains("private key"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("missing.pem");
        let err = ServerCredential::from_files(&p, &p).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
