//! A throwaway CA and node certificates for QUIC tests.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

pub const SERVER_NAME: &str = "federation.isthmus.local";

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// TLS configs for a node whose SPIFFE id is in `trust_domain`.
    pub fn node_tls(
        &self,
        trust_domain: &str,
        id: u64,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            format!("spiffe://{trust_domain}/federation/node-{id}")
                .try_into()
                .unwrap(),
        ));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain = vec![cert.der().clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        configs(self.der.clone(), chain, key_der)
    }
}

impl Ca {
    /// Writes the CA certificate and a node's certificate and key (DER) to
    /// `dir`, for a child process to load with `tls_from_files`.
    pub fn write_node_files(&self, dir: &std::path::Path, trust_domain: &str, id: u64) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            format!("spiffe://{trust_domain}/federation/node-{id}")
                .try_into()
                .unwrap(),
        ));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(dir.join("ca.der"), self.der.as_ref()).unwrap();
        std::fs::write(dir.join(format!("node-{id}.der")), cert.der().as_ref()).unwrap();
        std::fs::write(dir.join(format!("node-{id}.key")), key.serialize_der()).unwrap();
    }
}

pub fn tls_from_files(
    dir: &std::path::Path,
    id: u64,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let ca = CertificateDer::from(std::fs::read(dir.join("ca.der")).unwrap());
    let chain = vec![CertificateDer::from(
        std::fs::read(dir.join(format!("node-{id}.der"))).unwrap(),
    )];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        std::fs::read(dir.join(format!("node-{id}.key"))).unwrap(),
    ));
    configs(ca, chain, key_der)
}

fn configs(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .unwrap();
    (Arc::new(server), Arc::new(client))
}
