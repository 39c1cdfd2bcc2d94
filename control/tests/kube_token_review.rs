//! The CA in Kubernetes mode: CSR callers authenticated by their
//! service-account token through the TokenReview API of a fake API server,
//! over the real gRPC CA endpoint (TLS on 127.0.0.1:0).

mod fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use isthmus_control::source::kube::{TokenReviewAuthenticator, TokenReviewConfig};
use serde_json::json;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);

use isthmus_identity::ca::{create_intermediate, create_root, IntermediateOptions, RootOptions};
use isthmus_identity::{
    static_bundle, tls, Authority, CaClient, CaClientConfig, CaMetrics, CaService, CaServiceConfig,
    CertManager, CertManagerConfig, ChannelTls, ClientError, FileAuthenticator, LeafPolicy,
    PeerPolicy, SpiffeId, TokenTable, TrustBundle,
};

const TD: &str = "cluster.local";

struct Ca {
    addr: std::net::SocketAddr,
    bundle: TrustBundle,
    _own: CertManager,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn ca_id() -> SpiffeId {
    SpiffeId::new(TD, "istio-system", "isthmus-control").unwrap()
}

async fn start_ca(server: &FakeApiServer) -> Ca {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = create_root(&RootOptions::default()).unwrap();
    let mut opts = IntermediateOptions::new("east");
    opts.trust_domain = TD.into();
    let intermediate = create_intermediate(&root, &opts).unwrap();
    let chain = format!("{}{}", intermediate.cert_pem, root.cert_pem);
    let authority = Authority::new(
        &intermediate,
        &chain,
        &root.cert_pem,
        TD,
        LeafPolicy::default(),
    )
    .unwrap();
    let (_tx, authority_rx) = watch::channel(Arc::new(authority));
    let own = CertManager::start(
        CertManagerConfig::new(ca_id()),
        Arc::new(isthmus_identity::AuthoritySigner::new(
            authority_rx.clone(),
            ca_id(),
        )),
    )
    .unwrap();
    own.wait_ready(WAIT).await.unwrap();
    let bundle = TrustBundle::from_pem(&root.cert_pem, "root").unwrap();
    let tls_config = tls::server_config(
        own.subscribe(),
        static_bundle(bundle.clone()),
        PeerPolicy::trust_domain(TD),
        false,
        &[b"h2".as_slice()],
    )
    .unwrap();
    let authenticator = TokenReviewAuthenticator::new(
        server.client(),
        TD,
        TokenReviewConfig::new(TD),
        Arc::new(FileAuthenticator::new(TD, TokenTable::default())),
    );
    let service = CaService::new(
        authority_rx,
        Arc::new(authenticator),
        CaServiceConfig::default(),
        CaMetrics::new(&prometheus::Registry::new()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(isthmus_identity::service::serve_tls(
        listener,
        tls_config,
        service,
        async move {
            let _ = stop_rx.await;
        },
    ));
    Ca {
        addr,
        bundle,
        _own: own,
        _stop: stop,
    }
}

fn client(ca: &Ca, token: &str) -> CaClient {
    let config = tls::client_config(
        None,
        static_bundle(ca.bundle.clone()),
        PeerPolicy::exactly([ca_id()]),
        &[b"h2".as_slice()],
    )
    .unwrap();
    let mut cfg = CaClientConfig::new(ca.addr.to_string());
    cfg.tls = Some(ChannelTls {
        config,
        server_name: rustls::pki_types::ServerName::try_from("isthmus-control.istio-system.svc")
            .unwrap(),
    });
    cfg.token = Some(token.into());
    cfg.timeout = Duration::from_secs(5);
    CaClient::new(cfg)
}

fn csr(ns: &str, sa: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = SpiffeId::new(TD, ns, sa).unwrap().to_uri();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.as_str().try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn code(e: ClientError) -> tonic::Code {
    match e {
        ClientError::Status(s) => s.code(),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test]
async fn service_account_tokens_get_only_their_own_identity() {
    let server = FakeApiServer::start().await;
    server.add_token(
        "token-reviews",
        "system:serviceaccount:shop:bookinfo-reviews",
        &["istio-ca"],
    );
    server.add_token(
        "token-ratings",
        "system:serviceaccount:shop:bookinfo-ratings",
        &["istio-ca"],
    );
    server.add_token(
        "token-api",
        "system:serviceaccount:shop:bookinfo-reviews",
        &["https://kubernetes.default.svc"],
    );
    server.add_token("token-user", "alice", &["istio-ca"]);
    let ca = start_ca(&server).await;

    // Its own identity: issued.
    let chain = client(&ca, "token-reviews")
        .create_certificate(csr("shop", "bookinfo-reviews"), None)
        .await
        .expect("a CSR for the token's own account is signed");
    assert!(!chain.is_empty());

    // A CSR for account A with a token of account B: PERMISSION_DENIED.
    let err = client(&ca, "token-ratings")
        .create_certificate(csr("shop", "bookinfo-reviews"), None)
        .await
        .unwrap_err();
    assert_eq!(code(err), tonic::Code::PermissionDenied);

    // Tokens the API server does not vouch for (unknown, meant for
    // another audience, not a service account): UNAUTHENTICATED.
    for token in ["forged", "token-api", "token-user"] {
        let err = client(&ca, token)
            .create_certificate(csr("shop", "bookinfo-reviews"), None)
            .await
            .unwrap_err();
        assert_eq!(code(err), tonic::Code::Unauthenticated, "token {token}");
    }

    // The reviews asked for Istio's CA audience and the trust domain.
    let review = server
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/tokenreviews"))
        .unwrap();
    let body = review.body.unwrap();
    assert_eq!(body["spec"]["audiences"], json!(["istio-ca", TD]));
    assert_eq!(body["spec"]["token"], "token-reviews");
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable_not_a_denial() {
    let server = FakeApiServer::start().await;
    let ca = start_ca(&server).await;
    drop(server);
    let err = client(&ca, "token-reviews")
        .create_certificate(csr("shop", "bookinfo-reviews"), None)
        .await
        .unwrap_err();
    assert_eq!(code(err), tonic::Code::Unavailable);
}
