//! Shared fixtures: an in-memory root and intermediate, and a real CA server on port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::auth::{FileAuthenticator, TokenTable};
use isthmus_identity::ca::{create_intermediate, create_root, IntermediateOptions, RootOptions};
use isthmus_identity::client::{CaClient, CaClientConfig};
use isthmus_identity::manager::{CertManager, CertManagerConfig};
use isthmus_identity::service::{CaMetrics, CaService, CaServiceConfig, RateLimit};
use isthmus_identity::ChannelTls;
use isthmus_identity::{
    static_bundle, tls, Authority, CaMaterial, LeafPolicy, PeerPolicy, SpiffeId, TrustBundle,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub const TD: &str = "cluster.local";

pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct Pki {
    pub root: CaMaterial,
    pub intermediate: CaMaterial,
    pub chain_pem: String,
    pub trust_domain: String,
}

impl Pki {
    pub fn new(trust_domain: &str, cluster: &str) -> Self {
        let root = create_root(&RootOptions::default()).unwrap();
        Self::under(root, trust_domain, cluster)
    }

    pub fn under(root: CaMaterial, trust_domain: &str, cluster: &str) -> Self {
        let mut opts = IntermediateOptions::new(cluster);
        opts.trust_domain = trust_domain.to_owned();
        let intermediate = create_intermediate(&root, &opts).unwrap();
        let chain_pem = format!("{}{}", intermediate.cert_pem, root.cert_pem);
        Self {
            root,
            intermediate,
            chain_pem,
            trust_domain: trust_domain.to_owned(),
        }
    }

    pub fn authority(&self, policy: LeafPolicy) -> Authority {
        Authority::new(
            &self.intermediate,
            &self.chain_pem,
            &self.root.cert_pem,
            &self.trust_domain,
            policy,
        )
        .unwrap()
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.root.cert_pem, "root").unwrap()
    }
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

pub fn ca_identity() -> SpiffeId {
    id("istio-system", "isthmus-ca")
}

/// A CA server over real TLS on 127.0.0.1:0. Stops when dropped.
pub struct CaServer {
    pub addr: SocketAddr,
    pub registry: prometheus::Registry,
    pub bundle: TrustBundle,
    _shutdown: oneshot::Sender<()>,
    _own_cert: CertManager,
}

pub struct FixedSigner(pub Arc<Authority>, pub SpiffeId);

#[tonic::async_trait]
impl isthmus_identity::CertificateSigner for FixedSigner {
    async fn sign(
        &self,
        csr_pem: String,
        lifetime: Option<Duration>,
    ) -> Result<Vec<String>, isthmus_identity::ClientError> {
        self.0
            .sign_csr(&csr_pem, &self.1, lifetime)
            .map(|l| l.chain_pem)
            .map_err(|e| {
                isthmus_identity::ClientError::Status(tonic::Status::internal(e.to_string()))
            })
    }
}

impl CaServer {
    pub async fn start(pki: &Pki, tokens: TokenTable, rate: RateLimit, policy: LeafPolicy) -> Self {
        Self::start_with_bundle(pki, tokens, rate, policy, pki.bundle()).await
    }

    pub async fn start_with_bundle(
        pki: &Pki,
        tokens: TokenTable,
        rate: RateLimit,
        policy: LeafPolicy,
        bundle: TrustBundle,
    ) -> Self {
        let (_authority_tx, authority_rx) = watch::channel(Arc::new(pki.authority(policy)));
        // The CA's own serving certificate comes from its authority, in process.
        let own = CertManager::start(
            CertManagerConfig::new(ca_identity()),
            Arc::new(isthmus_identity::AuthoritySigner::new(
                authority_rx.clone(),
                ca_identity(),
            )),
        )
        .unwrap();
        own.wait_ready(Duration::from_secs(10)).await.unwrap();
        let tls = tls::server_config(
            own.subscribe(),
            static_bundle(bundle.clone()),
            PeerPolicy::trust_domain(TD),
            false,
            &[b"h2".as_slice()],
        )
        .unwrap();
        let registry = prometheus::Registry::new();
        let metrics = CaMetrics::new(&registry).unwrap();
        let service = CaService::new(
            authority_rx,
            Arc::new(FileAuthenticator::new(TD, tokens)),
            CaServiceConfig { rate_limit: rate },
            metrics,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(isthmus_identity::service::serve_tls(
            listener,
            tls,
            service,
            async move {
                let _ = stop_rx.await;
            },
        ));
        Self {
            addr,
            registry,
            bundle,
            _shutdown: stop_tx,
            _own_cert: own,
        }
    }

    /// A client that verifies the CA's identity and, if `certs` is given,
    /// presents the workload's current certificate.
    pub fn client(
        &self,
        token: Option<&str>,
        certs: Option<isthmus_identity::CertWatch>,
    ) -> CaClient {
        let config = tls::client_config(
            certs,
            static_bundle(self.bundle.clone()),
            PeerPolicy::exactly([ca_identity()]),
            &[b"h2".as_slice()],
        )
        .unwrap();
        let mut cfg = CaClientConfig::new(self.addr.to_string());
        cfg.tls = Some(ChannelTls {
            config,
            server_name: rustls_pki_types::ServerName::try_from("isthmus-ca.istio-system.svc")
                .unwrap(),
        });
        cfg.token = token.map(str::to_owned);
        cfg.timeout = Duration::from_secs(5);
        CaClient::new(cfg)
    }

    pub fn issued_count(&self, outcome: &str) -> u64 {
        for family in self.registry.gather() {
            if family.name() == "isthmus_ca_csr_requests_total" {
                for m in family.get_metric() {
                    if m.get_label().iter().any(|l| l.value() == outcome) {
                        return m.get_counter().get_value() as u64;
                    }
                }
            }
        }
        0
    }
}

pub fn csr_for(uri: &str) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}
