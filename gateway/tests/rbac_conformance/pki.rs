//! The federation's PKI: callers' SPIFFE IDs, one root with cluster
//! west's, cluster east's and another trust domain's intermediates, leaf
//! issuance, and the callers' mTLS client configurations.

use std::sync::Arc;

use isthmus_identity::ca::{
    create_intermediate, create_root, Authority, CaMaterial, IntermediateOptions, LeafPolicy,
    RootOptions,
};
use isthmus_identity::SpiffeId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

// Callers.
pub const WEB: &str = "spiffe://cluster.local/ns/frontend/sa/web";
pub const API: &str = "spiffe://cluster.local/ns/backend/sa/api";
/// Same trust domain, signed by cluster east's intermediate.
pub const BATCH_EAST: &str = "spiffe://cluster.local/ns/frontend/sa/batch";
/// Another trust domain.
pub const WEB_OTHER_TD: &str = "spiffe://other.td/ns/frontend/sa/web";

/// The federation's CAs, as `isthmus ca init|intermediate` makes them.
pub struct Pki {
    pub root_pem: String,
    west: Authority,
    east: Authority,
    other: Authority,
}

fn authority(root: &CaMaterial, cluster: &str, td: &str) -> Authority {
    let mut opts = IntermediateOptions::new(cluster);
    opts.trust_domain = td.to_string();
    let inter = create_intermediate(root, &opts).expect("intermediate");
    Authority::new(
        &inter,
        &inter.cert_pem,
        &root.cert_pem,
        td,
        LeafPolicy::default(),
    )
    .expect("authority")
}

impl Pki {
    pub fn new() -> Self {
        let root = create_root(&RootOptions::default()).expect("root");
        Pki {
            root_pem: root.cert_pem.clone(),
            west: authority(&root, "west", "cluster.local"),
            east: authority(&root, "east", "cluster.local"),
            other: authority(&root, "remote", "other.td"),
        }
    }

    /// A leaf for `id` from the CA that would issue it: key made locally,
    /// CSR signed by the cluster's intermediate.
    pub fn leaf(&self, id: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca = if id == BATCH_EAST {
            &self.east
        } else if id.starts_with("spiffe://other.td/") {
            &self.other
        } else {
            &self.west
        };
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("ia5"))];
        let csr = params.serialize_request(&key).expect("csr");
        let caller = SpiffeId::parse(id).expect("spiffe id");
        let issued = ca
            .sign_csr(&csr.pem().expect("pem"), &caller, None)
            .expect("signed");
        let chain = issued
            .chain_pem
            .iter()
            .take(issued.chain_pem.len().saturating_sub(1)) // without the root
            .map(|p| pem_der(p))
            .collect();
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        pem_der(&self.root_pem)
    }
}

fn pem_der(pem: &str) -> CertificateDer<'static> {
    isthmus_identity::pem::certs_from_pem(pem, "test certificate")
        .expect("PEM certificate")
        .remove(0)
}

pub fn tls_config(pki: &Pki, id: &str) -> Arc<rustls::ClientConfig> {
    let verifier = Arc::new(
        isthmus_gateway::tls::SpiffeVerifier::new(&[pki.root_der()], vec![]).expect("verifier"),
    );
    let (chain, key) = pki.leaf(id);
    Arc::new(
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
    )
}
