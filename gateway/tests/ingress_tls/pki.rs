//! Test certificates: a user CA (not the mesh's SPIFFE CA) issuing
//! DNS-named server and client leaves, as PEM.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A user CA issuing DNS-named certificates (not the mesh's SPIFFE CA).
pub(crate) struct UserCa {
    params: CertificateParams,
    key: KeyPair,
    pub(crate) pem: String,
}

pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl UserCa {
    pub(crate) fn new(cn: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self sign");
        Self {
            pem: cert.pem(),
            params,
            key,
        }
    }

    pub(crate) fn leaf(&self, name: &str, client: bool) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![name.to_string()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
