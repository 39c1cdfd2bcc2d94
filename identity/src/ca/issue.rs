//! Root and per-cluster intermediate CA certificates.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::keys::{generate_key, load_key, KeyAlgorithm};
use super::CaError;
use crate::pem::first_cert_der;
use crate::spiffe::validate_trust_domain;

/// Certificates are back-dated by this much so peers with slightly slow clocks accept them.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A CA certificate with its private key, both PEM.
#[derive(Clone)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct RootOptions {
    pub common_name: String,
    pub organization: String,
    pub validity: Duration,
    pub algorithm: KeyAlgorithm,
    /// An existing PKCS#8 key (PEM) instead of a generated one (required for RSA).
    pub key_pem: Option<String>,
}

impl Default for RootOptions {
    fn default() -> Self {
        Self {
            common_name: "Isthmus Root CA".to_owned(),
            organization: "Isthmus".to_owned(),
            validity: Duration::from_secs(10 * 365 * 24 * 3600),
            algorithm: KeyAlgorithm::default(),
            key_pem: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct IntermediateOptions {
    pub cluster_id: String,
    pub trust_domain: String,
    pub validity: Duration,
    pub algorithm: KeyAlgorithm,
    pub key_pem: Option<String>,
}

impl IntermediateOptions {
    pub fn new(cluster_id: &str) -> Self {
        Self {
            cluster_id: cluster_id.to_owned(),
            trust_domain: crate::spiffe::DEFAULT_TRUST_DOMAIN.to_owned(),
            validity: Duration::from_secs(365 * 24 * 3600),
            algorithm: KeyAlgorithm::default(),
            key_pem: None,
        }
    }
}

/// Creates a self-signed root CA.
pub fn create_root(opts: &RootOptions) -> Result<CaMaterial, CaError> {
    let key = obtain_key(opts.algorithm, opts.key_pem.as_deref(), "root key (--key)")?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, opts.organization.as_str());
    params
        .distinguished_name
        .push(DnType::CommonName, opts.common_name.as_str());
    params.not_before = now - CLOCK_SKEW;
    params.not_after = add(now, opts.validity)?;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a per-cluster intermediate signed by `root`. Its path length is 0, so
/// it can sign workload leaves but no further CA.
pub fn create_intermediate(
    root: &CaMaterial,
    opts: &IntermediateOptions,
) -> Result<CaMaterial, CaError> {
    validate_trust_domain(&opts.trust_domain)?;
    if opts.cluster_id.trim().is_empty() {
        return Err(CaError::BadValidity(
            "the cluster ID must not be empty".to_owned(),
        ));
    }
    let root_key = load_key(&root.key_pem, "root key")?;
    let root_der = first_cert_der(&root.cert_pem, "root certificate")?;
    let root_not_after = check_ca_cert(&root_der, &root_key, "root certificate")?;
    let issuer = Issuer::from_ca_cert_der(&root_der, root_key)?;

    let key = obtain_key(
        opts.algorithm,
        opts.key_pem.as_deref(),
        "intermediate key (--key)",
    )?;
    let now = OffsetDateTime::now_utc();
    let not_after = add(now, opts.validity)?.min(root_not_after);
    if not_after <= now {
        return Err(CaError::CaExpired(root_not_after.to_string()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, opts.trust_domain.as_str());
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Isthmus intermediate CA {}", opts.cluster_id),
    );
    params.not_before = now - CLOCK_SKEW;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn obtain_key(alg: KeyAlgorithm, pem: Option<&str>, what: &str) -> Result<KeyPair, CaError> {
    match pem {
        Some(pem) => load_key(pem, what),
        None => generate_key(alg),
    }
}

/// Checks that `der` is a usable CA certificate whose public key is `key`;
/// returns its expiry.
pub(crate) fn check_ca_cert(
    der: &[u8],
    key: &KeyPair,
    what: &str,
) -> Result<OffsetDateTime, CaError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    let can_sign = cert
        .key_usage()
        .ok()
        .flatten()
        .is_none_or(|ku| ku.value.key_cert_sign());
    if !is_ca || !can_sign {
        return Err(CaError::NotCa {
            what: what.to_owned(),
        });
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::KeyMismatch {
            what: what.to_owned(),
        });
    }
    Ok(cert.validity().not_after.to_datetime())
}

/// A positive 128-bit random serial, as RFC 5280 recommends.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    // A leading zero byte would make the DER INTEGER non-minimal in some encoders.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn add(t: OffsetDateTime, d: Duration) -> Result<OffsetDateTime, CaError> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
        .ok_or_else(|| CaError::BadValidity(format!("{d:?} is out of range")))
}
