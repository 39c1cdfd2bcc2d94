//! Signing workload leaves from CSRs with a cluster's intermediate.

use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::issue::{add, check_ca_cert, random_serial, CLOCK_SKEW};
use super::keys::load_key;
use super::{CaError, CaMaterial};
use crate::pem::{cert_to_pem, certs_from_pem};
use crate::spiffe::{validate_trust_domain, SpiffeId};

/// How long issued leaves live.
#[derive(Clone, Debug)]
pub struct LeafPolicy {
    /// Used when the request does not ask for a validity (Istio: 24 h).
    pub default_lifetime: Duration,
    /// Requests for longer validity are shortened to this.
    pub max_lifetime: Duration,
}

impl Default for LeafPolicy {
    fn default() -> Self {
        Self {
            default_lifetime: Duration::from_secs(24 * 3600),
            max_lifetime: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// A signed workload certificate.
#[derive(Clone, Debug)]
pub struct IssuedLeaf {
    pub identity: SpiffeId,
    /// PEM certificates: the leaf first, then the intermediate(s), the root last.
    pub chain_pem: Vec<String>,
    /// Serial number, lower-case hex, for logs.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// A cluster's issuing CA: the intermediate's key plus the chain up to the root.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM of the intermediate, any further intermediates, the signing root,
    /// then the other roots of root-cert.pem (what a leaf response carries).
    chain_pem: Vec<String>,
    intermediate_pem: String,
    /// The root the intermediate chains to.
    root_pem: String,
    /// Every root of root-cert.pem (the cluster's trust bundle), in file order.
    roots_pem: Vec<String>,
    trust_domain: String,
    ca_not_before: OffsetDateTime,
    ca_not_after: OffsetDateTime,
    policy: LeafPolicy,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("ca_not_after", &self.ca_not_after)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// `ca` is the issuing certificate and key (Istio's ca-cert.pem / ca-key.pem),
    /// `cert_chain_pem` the chain from it to the root (cert-chain.pem) and
    /// `root_cert_pem` the root (root-cert.pem).
    pub fn new(
        ca: &CaMaterial,
        cert_chain_pem: &str,
        root_cert_pem: &str,
        trust_domain: &str,
        policy: LeafPolicy,
    ) -> Result<Self, CaError> {
        validate_trust_domain(trust_domain)?;
        let key = load_key(&ca.key_pem, "CA key (ca-key.pem)")?;
        let ca_certs = certs_from_pem(&ca.cert_pem, "CA certificate (ca-cert.pem)")?;
        let ca_der = &ca_certs[0];
        check_ca_cert(ca_der, &key, "CA certificate (ca-cert.pem)")?;
        let (_, parsed) =
            X509Certificate::from_der(ca_der).map_err(|e| CaError::BadCertificate {
                what: "CA certificate (ca-cert.pem)".to_owned(),
                reason: e.to_string(),
            })?;
        let ca_not_before = parsed.validity().not_before.to_datetime();
        let ca_not_after = parsed.validity().not_after.to_datetime();
        let now = OffsetDateTime::now_utc();
        if now >= ca_not_after {
            return Err(CaError::CaExpired(ca_not_after.to_string()));
        }
        if ca_not_before > now + CLOCK_SKEW {
            return Err(CaError::BadValidity(format!(
                "CA certificate (ca-cert.pem) is not valid before {ca_not_before}; check this host's clock"
            )));
        }

        let mut chain: Vec<Vec<u8>> = certs_from_pem(cert_chain_pem, "cert-chain.pem")?
            .into_iter()
            .map(|c| c.to_vec())
            .collect();
        if chain.first().map(Vec::as_slice) != Some(ca_der.as_ref()) {
            chain.insert(0, ca_der.to_vec());
        }
        // The chain ends at its first self-signed certificate; anything after
        // it is not part of the path (older tools appended every root there).
        if let Some(end) = chain
            .iter()
            .skip(1)
            .position(|c| is_self_signed(c))
            .map(|i| i + 2)
        {
            chain.truncate(end);
        }
        // root-cert.pem is a trust bundle: during a root rotation it holds
        // the old and the new root, and only one of them signs this chain.
        let roots: Vec<Vec<u8>> = certs_from_pem(root_cert_pem, "root-cert.pem")?
            .into_iter()
            .map(|c| c.to_vec())
            .collect();
        for (i, root) in roots.iter().enumerate() {
            check_root(root, &format!("root-cert.pem (certificate #{})", i + 1))?;
        }
        let top = chain.last().cloned().unwrap_or_default();
        if is_self_signed(&top) {
            if !roots.contains(&top) {
                return Err(CaError::BrokenChain(format!(
                    "cert-chain.pem ends in the root `{}`, which is not in root-cert.pem",
                    subject_of(&top)
                )));
            }
        } else {
            let signer = roots.iter().find(|r| signs(r, &top)).ok_or_else(|| {
                CaError::BrokenChain(format!(
                    "no root in root-cert.pem signed `{}`",
                    subject_of(&top)
                ))
            })?;
            chain.push(signer.clone());
        }
        check_chain_links(&chain)?;
        for (i, der) in chain.iter().enumerate().skip(1) {
            check_not_expired(
                der,
                now,
                &format!("cert-chain.pem (certificate #{})", i + 1),
            )?;
        }
        let issuer = Issuer::from_ca_cert_der(ca_der, key)?;
        let chain_pem: Vec<String> = chain.iter().map(|d| cert_to_pem(d)).collect();
        let roots_pem: Vec<String> = roots.iter().map(|d| cert_to_pem(d)).collect();
        let root_pem = chain_pem.last().cloned().unwrap_or_default();
        // Leaves carry every trusted root after the signing one, so a workload
        // learns the whole bundle from its CA (as Istio's CA does).
        let mut response_chain = chain_pem.clone();
        for (der, pem) in roots.iter().zip(&roots_pem) {
            if !chain.contains(der) {
                response_chain.push(pem.clone());
            }
        }
        Ok(Self {
            issuer,
            chain_pem: response_chain,
            intermediate_pem: chain_pem.first().cloned().unwrap_or_default(),
            root_pem,
            roots_pem,
            trust_domain: trust_domain.to_owned(),
            ca_not_before,
            ca_not_after,
            policy,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn policy(&self) -> &LeafPolicy {
        &self.policy
    }

    /// The CA chain handed out with every leaf: intermediate first, then the
    /// signing root, then any further roots of root-cert.pem.
    pub fn ca_chain_pem(&self) -> &[String] {
        &self.chain_pem
    }

    /// The issuing intermediate, as published into the federation registry.
    pub fn intermediate_pem(&self) -> &str {
        &self.intermediate_pem
    }

    /// The root this cluster's intermediate chains to.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Every root of root-cert.pem, as published into the federation
    /// registry: during a root rotation, the old and the new root.
    pub fn roots_pem(&self) -> &[String] {
        &self.roots_pem
    }

    /// When the intermediate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.ca_not_after
    }

    /// Signs the public key of `csr_pem` for `caller`, who has already been
    /// authenticated. The leaf carries only the caller's SPIFFE URI SAN; a CSR
    /// that asks for any other SPIFFE identity is refused.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        requested: Option<Duration>,
    ) -> Result<IssuedLeaf, CaError> {
        if caller.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                caller: caller.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        check_csr_key_strength(csr_pem)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CaError::BadCsr(match e {
                rcgen::Error::CouldNotParseCertificationRequest => {
                    "not a PEM `CERTIFICATE REQUEST` (PKCS#10)".to_owned()
                }
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "its signature does not verify (proof of key possession failed)".to_owned()
                }
                rcgen::Error::UnsupportedExtension => {
                    "it requests an extension other than SAN, key usage, extended key usage or basic constraints".to_owned()
                }
                other => other.to_string(),
            })
        })?;
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(CaError::CsrRequestsCa);
        }
        let wanted = caller.to_uri();
        for san in &csr.params.subject_alt_names {
            if let SanType::URI(uri) = san {
                let uri = uri.as_str();
                if uri != wanted {
                    return Err(CaError::CsrIdentityMismatch {
                        requested: uri.to_owned(),
                        caller: wanted,
                    });
                }
            }
        }

        let now = OffsetDateTime::now_utc();
        if now >= self.ca_not_after {
            return Err(CaError::CaExpired(self.ca_not_after.to_string()));
        }
        let lifetime = match requested {
            Some(d) if !d.is_zero() => d.min(self.policy.max_lifetime),
            _ => self.policy.default_lifetime,
        };
        let mut params = CertificateParams::default();
        // No subject: the identity lives only in the (then critical) SAN, as in Istio.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(wanted.as_str().try_into()?)];
        params.not_before = (now - CLOCK_SKEW).max(self.ca_not_before);
        params.not_after = add(now, lifetime)?.min(self.ca_not_after);
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;

        let mut chain_pem = Vec::with_capacity(self.chain_pem.len() + 1);
        chain_pem.push(cert.pem());
        chain_pem.extend(self.chain_pem.iter().cloned());
        Ok(IssuedLeaf {
            identity: caller.clone(),
            chain_pem,
            serial: serial
                .to_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            not_after: params.not_after,
        })
    }
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

fn is_self_signed(der: &[u8]) -> bool {
    parse(der).is_some_and(|c| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
}

fn signs(parent: &[u8], child: &[u8]) -> bool {
    match (parse(parent), parse(child)) {
        (Some(p), Some(c)) => {
            c.issuer() == p.subject() && c.verify_signature(Some(p.public_key())).is_ok()
        }
        _ => false,
    }
}

fn subject_of(der: &[u8]) -> String {
    parse(der)
        .map(|c| c.subject().to_string())
        .unwrap_or_else(|| "unparseable certificate".to_owned())
}

/// A trusted root must be a self-signed CA certificate that is still valid.
fn check_root(der: &[u8], what: &str) -> Result<(), CaError> {
    let cert = parse(der).ok_or_else(|| CaError::BadCertificate {
        what: what.to_owned(),
        reason: "unparseable".to_owned(),
    })?;
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
    if !is_self_signed(der) {
        return Err(CaError::BrokenChain(format!(
            "{what} (`{}`) is not a self-signed root",
            cert.subject()
        )));
    }
    check_not_expired(der, OffsetDateTime::now_utc(), what)
}

fn check_not_expired(der: &[u8], now: OffsetDateTime, what: &str) -> Result<(), CaError> {
    let Some(cert) = parse(der) else {
        return Err(CaError::BadCertificate {
            what: what.to_owned(),
            reason: "unparseable".to_owned(),
        });
    };
    let not_after = cert.validity().not_after.to_datetime();
    if now >= not_after {
        return Err(CaError::BadValidity(format!(
            "{what} (`{}`) expired at {not_after}",
            cert.subject()
        )));
    }
    Ok(())
}

/// Each certificate must be signed by the next, and the last must be a
/// self-signed root: plug-in files that do not fit together would produce
/// leaves no peer can verify, so they are refused at load time.
fn check_chain_links(chain: &[Vec<u8>]) -> Result<(), CaError> {
    let broken = |reason: String| CaError::BrokenChain(reason);
    let parsed = chain
        .iter()
        .map(|d| {
            X509Certificate::from_der(d)
                .map(|(_, c)| c)
                .map_err(|e| broken(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for pair in parsed.windows(2) {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.issuer() != parent.subject()
            || child.verify_signature(Some(parent.public_key())).is_err()
        {
            return Err(broken(format!(
                "`{}` is not signed by `{}`",
                child.subject(),
                parent.subject()
            )));
        }
    }
    match parsed.last() {
        Some(root) if root.subject() == root.issuer() && root.verify_signature(None).is_ok() => {
            Ok(())
        }
        Some(last) => Err(broken(format!(
            "the chain ends in `{}`, which is not a self-signed root",
            last.subject()
        ))),
        None => Err(broken("the chain is empty".to_owned())),
    }
}

const MIN_RSA_BITS: usize = 2048;

/// Refuses weak RSA keys with a message that says so (otherwise they fail
/// later as an unverifiable signature). Unparseable input is left to the full
/// CSR parser, which reports it.
fn check_csr_key_strength(csr_pem: &str) -> Result<(), CaError> {
    use rustls_pki_types::pem::PemObject;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::public_key::PublicKey;

    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
    if let Ok(PublicKey::RSA(rsa)) = csr.certification_request_info.subject_pki.parsed() {
        let bits = rsa.key_size();
        if bits < MIN_RSA_BITS {
            return Err(CaError::BadCsr(format!(
                "its RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
            )));
        }
    }
    Ok(())
}
