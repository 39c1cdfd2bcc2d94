//! A throwaway CA and per-node certificates for the Isthmus processes.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;

pub const SERVER_NAME: &str = "federation.isthmus.local";
pub const TD: &str = "bench.isthmus.local";

pub fn spiffe(id: u64) -> String {
    format!("spiffe://{TD}/ns/federation/sa/node-{id}")
}

/// Writes `ca.der` and `node-<id>.{der,key}` for every id.
pub fn write(dir: &Path, ids: &[u64]) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let ca_key = KeyPair::generate().map_err(|x| e(&x))?;
    let mut ca = CertificateParams::new(vec![]).map_err(|x| e(&x))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).map_err(|x| e(&x))?;
    std::fs::write(dir.join("ca.der"), ca_cert.der()).map_err(|x| e(&x))?;
    let issuer = Issuer::new(ca, ca_key);
    for id in ids {
        let key = KeyPair::generate().map_err(|x| e(&x))?;
        let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(|x| e(&x))?;
        let uri = spiffe(*id).try_into().map_err(|x| e(&x))?;
        p.subject_alt_names.push(SanType::URI(uri));
        let cert = p.signed_by(&key, &issuer).map_err(|x| e(&x))?;
        std::fs::write(dir.join(format!("node-{id}.der")), cert.der()).map_err(|x| e(&x))?;
        std::fs::write(dir.join(format!("node-{id}.key")), key.serialize_der())
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

pub type Tls = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);

pub fn load(dir: &Path, id: u64) -> Result<Tls, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let read = |name: String| std::fs::read(dir.join(name)).map_err(|x| e(&x));
    let ca = CertificateDer::from(read("ca.der".into())?);
    let chain = vec![CertificateDer::from(read(format!("node-{id}.der"))?)];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(read(format!("node-{id}.key"))?));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|x| e(&x))?;
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|x| e(&x))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| e(&x))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|x| e(&x))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| e(&x))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|x| e(&x))?;
    Ok((Arc::new(server), Arc::new(client)))
}
