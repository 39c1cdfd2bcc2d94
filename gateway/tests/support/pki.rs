//! Test PKI with rcgen: one federation root, one intermediate per cluster,
//! SPIFFE leaf certificates.

use std::sync::Arc;

use isthmus_gateway::tls::{CertReceiver, WorkloadCertificate};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// Chain from this CA up to (not including) the root.
    chain: Vec<CertificateDer<'static>>,
}

fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "isthmus-test");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Ca {
    pub fn root() -> Self {
        let key = KeyPair::generate().expect("key");
        let params = ca_params("isthmus test root", None);
        let cert = params.self_signed(&key).expect("self sign");
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
            chain: Vec::new(),
        }
    }

    pub fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let params = ca_params(name, Some(0));
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
            chain,
        }
    }

    /// A workload leaf with a SPIFFE URI SAN: (chain leaf-first, key).
    pub fn leaf(&self, spiffe: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![SanType::URI(spiffe.try_into().expect("ia5"))];
        p.distinguished_name = DistinguishedName::new();
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).expect("sign leaf");
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// A workload certificate source (as the identity crate's manager would feed it).
    pub fn workload(
        &self,
        root: &Ca,
        spiffe: &str,
    ) -> (watch::Sender<Arc<WorkloadCertificate>>, CertReceiver) {
        let (chain, key) = self.leaf(spiffe);
        let wc =
            WorkloadCertificate::new(chain, key, vec![root.der.clone()]).expect("workload cert");
        watch::channel(Arc::new(wc))
    }
}

impl Ca {
    /// A leaf as the identity crate holds it (e.g. the control plane's own
    /// serving certificate); `self` must be an intermediate directly under `root`.
    pub fn identity_cert(&self, root: &Ca, spiffe: &str) -> isthmus_identity::WorkloadCert {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![SanType::URI(spiffe.try_into().expect("ia5"))];
        p.distinguished_name = DistinguishedName::new();
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).expect("sign leaf");
        let id = isthmus_identity::SpiffeId::parse(spiffe).expect("spiffe id");
        isthmus_identity::WorkloadCert::from_issued(
            &id,
            key.serialize_der(),
            key.public_key_raw(),
            &[cert.pem(), self.pem.clone(), root.pem.clone()],
        )
        .expect("identity cert")
    }
}
