//! The federation-wide trust bundle: the set of root certificates a proxy
//! accepts peers under. During a root rotation it holds the old and the new
//! root at once, so traffic keeps flowing through every step.

use std::collections::BTreeMap;
use std::fmt;

use rustls_pki_types::{CertificateDer, TrustAnchor};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::CaError;
use crate::pem::{cert_to_pem, certs_from_pem};

/// SHA-256 of a certificate's DER, the identity of a bundle entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[derive(Clone, Debug)]
struct Root {
    der: CertificateDer<'static>,
    anchor: TrustAnchor<'static>,
    subject: String,
}

/// A set of trusted CA certificates, keyed by fingerprint (so adding the same
/// root twice is a no-op and two bundles compare by content).
#[derive(Clone, Debug, Default)]
pub struct TrustBundle {
    roots: BTreeMap<Fingerprint, Root>,
}

/// What changed between two bundles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleDiff {
    pub added: Vec<Fingerprint>,
    pub removed: Vec<Fingerprint>,
}

impl BundleDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl TrustBundle {
    pub fn new() -> Self {
        Self::default()
    }

    /// A bundle of every certificate in `pem`; each must be a CA certificate.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, CaError> {
        let mut bundle = Self::new();
        bundle.add_pem(pem, what)?;
        Ok(bundle)
    }

    /// A bundle of several PEM sources (e.g. one per cluster).
    pub fn from_pems<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, CaError> {
        let mut bundle = Self::new();
        for (what, pem) in sources {
            bundle.add_pem(pem, what)?;
        }
        Ok(bundle)
    }

    /// Adds every certificate of `pem`. Nothing is added unless all are valid,
    /// so a bad source never leaves the bundle half-updated.
    pub fn add_pem(&mut self, pem: &str, what: &str) -> Result<Vec<Fingerprint>, CaError> {
        let ders = certs_from_pem(pem, what)?;
        let mut parsed = Vec::with_capacity(ders.len());
        for (i, der) in ders.into_iter().enumerate() {
            parsed.push(Self::entry(
                der,
                &format!("{what} (certificate #{})", i + 1),
            )?);
        }
        Ok(parsed
            .into_iter()
            .map(|(fp, root)| {
                self.roots.insert(fp, root);
                fp
            })
            .collect())
    }

    pub fn add_der(&mut self, der: CertificateDer<'static>) -> Result<Fingerprint, CaError> {
        let (fp, root) = Self::entry(der, "trust bundle certificate")?;
        self.roots.insert(fp, root);
        Ok(fp)
    }

    fn entry(der: CertificateDer<'static>, what: &str) -> Result<(Fingerprint, Root), CaError> {
        let bad = |reason: String| CaError::BadCertificate {
            what: what.to_owned(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CaError::NotCa {
                what: what.to_owned(),
            });
        }
        let subject = cert.subject().to_string();
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| bad(format!("not usable as a trust anchor: {e}")))?
            .to_owned();
        Ok((
            Fingerprint::of(&der),
            Root {
                der,
                anchor,
                subject,
            },
        ))
    }

    /// Removes a root (the last step of a root rotation).
    pub fn remove(&mut self, fp: &Fingerprint) -> bool {
        self.roots.remove(fp).is_some()
    }

    /// Adds every root of `other`.
    pub fn merge(&mut self, other: &TrustBundle) {
        for (fp, root) in &other.roots {
            self.roots.entry(*fp).or_insert_with(|| root.clone());
        }
    }

    /// What `newer` adds to and removes from `self`.
    pub fn diff(&self, newer: &TrustBundle) -> BundleDiff {
        BundleDiff {
            added: newer
                .roots
                .keys()
                .filter(|fp| !self.roots.contains_key(fp))
                .copied()
                .collect(),
            removed: self
                .roots
                .keys()
                .filter(|fp| !newer.roots.contains_key(fp))
                .copied()
                .collect(),
        }
    }

    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.roots.contains_key(fp)
    }

    pub fn fingerprints(&self) -> impl Iterator<Item = Fingerprint> + '_ {
        self.roots.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub fn anchors(&self) -> Vec<TrustAnchor<'static>> {
        self.roots.values().map(|r| r.anchor.clone()).collect()
    }

    pub fn certs(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.roots.values().map(|r| &r.der)
    }

    /// Subjects, for logs and debug output.
    pub fn subjects(&self) -> Vec<String> {
        self.roots.values().map(|r| r.subject.clone()).collect()
    }

    /// All roots as one PEM text (what `ROOTCA` carries).
    pub fn to_pem(&self) -> String {
        self.roots.values().map(|r| cert_to_pem(&r.der)).collect()
    }
}

impl PartialEq for TrustBundle {
    fn eq(&self, other: &Self) -> bool {
        self.roots.keys().eq(other.roots.keys())
    }
}

impl Eq for TrustBundle {}
