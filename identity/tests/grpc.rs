//! The CA's gRPC service over real TLS on a real socket.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use isthmus_identity::auth::{
    AuthError, Authenticator, CallerContext, FileAuthenticator, TokenTable,
};
use isthmus_identity::manager::{CertManager, CertManagerConfig};
use isthmus_identity::service::RateLimit;
use isthmus_identity::verify::{verify_chain, PeerRole};
use isthmus_identity::{ClientError, LeafPolicy, SpiffeId};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

const TOKEN: &str = "bootstrap-token-productpage-0123456789";
const OTHER_TOKEN: &str = "bootstrap-token-reviews-0123456789ab";

fn tokens() -> TokenTable {
    TokenTable::parse(
        &format!(
            "# bootstrap tokens\n{TOKEN} default/productpage\n\n{OTHER_TOKEN} default/reviews # comment\n"
        ),
        TD,
        "tokens.txt",
    )
    .unwrap()
}

fn status_of(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn token_caller_gets_its_own_identity_only() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let ca = CaServer::start(&pki, tokens(), RateLimit::default(), LeafPolicy::default()).await;
    let me = id("default", "productpage");

    let client = ca.client(Some(TOKEN), None);
    let (_k, csr) = csr_for(&me.to_uri());
    let chain = client.create_certificate(csr, None).await.unwrap();
    assert_eq!(chain.len(), 3);
    let got = verify_chain(
        &pki.bundle(),
        &der(&chain[0]),
        &[der(&chain[1])],
        UnixTime::now(),
        PeerRole::Client,
        &rustls::crypto::ring::default_provider().signature_verification_algorithms,
    )
    .unwrap();
    assert_eq!(got, me);
    assert_eq!(ca.issued_count("issued"), 1);

    // Another identity's CSR with my token.
    let (_k, csr) = csr_for(&id("default", "reviews").to_uri());
    let status = status_of(client.create_certificate(csr, None).await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("only obtain its own identity"),
        "{status:?}"
    );
    assert_eq!(ca.issued_count("denied"), 1);

    // Malformed CSR.
    let status = status_of(
        client
            .create_certificate("hello".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("malformed certificate signing request"),
        "{status:?}"
    );

    // Unknown token, and no credentials at all.
    let (_k, csr) = csr_for(&me.to_uri());
    let status = status_of(
        ca.client(Some("not-a-known-token-at-all"), None)
            .create_certificate(csr.clone(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("unknown bootstrap token"),
        "{status:?}"
    );
    let status = status_of(
        ca.client(None, None)
            .create_certificate(csr, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("no credentials"), "{status:?}");
    assert_eq!(ca.issued_count("unauthenticated"), 2);
}

#[tokio::test]
async fn renewal_by_certificate_without_token() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let ca = CaServer::start(&pki, tokens(), RateLimit::default(), LeafPolicy::default()).await;
    let me = id("default", "productpage");

    let bootstrap = CertManager::start(
        CertManagerConfig::new(me.clone()),
        Arc::new(ca.client(Some(TOKEN), None)),
    )
    .unwrap();
    bootstrap.wait_ready(Duration::from_secs(10)).await.unwrap();

    // Now present that certificate, no token.
    let by_cert = ca.client(None, Some(bootstrap.subscribe()));
    let (_k, csr) = csr_for(&me.to_uri());
    by_cert.create_certificate(csr, None).await.unwrap();
    // The certificate vouches for its own identity only.
    let (_k, csr) = csr_for(&id("default", "reviews").to_uri());
    let status = status_of(by_cert.create_certificate(csr, None).await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn foreign_trust_domain_certificate_is_refused_by_the_ca() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let foreign = Pki::new("evil.example", "x");
    let mut bundle = pki.bundle();
    bundle.merge(&foreign.bundle());
    let ca = CaServer::start_with_bundle(
        &pki,
        tokens(),
        RateLimit::default(),
        LeafPolicy::default(),
        bundle,
    )
    .await;
    let evil_id = SpiffeId::new("evil.example", "default", "productpage").unwrap();
    let evil = CertManager::start(
        CertManagerConfig::new(evil_id.clone()),
        Arc::new(FixedSigner(
            Arc::new(foreign.authority(LeafPolicy::default())),
            evil_id.clone(),
        )),
    )
    .unwrap();
    evil.wait_ready(Duration::from_secs(10)).await.unwrap();

    let client = ca.client(None, Some(evil.subscribe()));
    let (_k, csr) = csr_for(&evil_id.to_uri());
    let err = client.create_certificate(csr, None).await.unwrap_err();
    // Refused at the TLS handshake: never reaches the signer.
    assert!(
        !matches!(&err, ClientError::Status(s) if s.code() == tonic::Code::Ok),
        "{err}"
    );
    assert_eq!(ca.issued_count("issued"), 0);
}

#[tokio::test]
async fn expired_client_certificate_is_not_accepted_as_credential() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    // An expired leaf for a legitimate identity, made directly with rcgen.
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &pki.intermediate.cert_pem,
        rcgen::KeyPair::from_pem(&pki.intermediate.key_pem).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        id("default", "productpage").to_uri().try_into().unwrap(),
    )];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(2);
    params.not_after = now - time::Duration::hours(1);
    let expired = params.signed_by(&key, &issuer).unwrap();

    let auth = FileAuthenticator::new(TD, tokens());
    let metadata = tonic::metadata::MetadataMap::new();
    let certs = vec![expired.der().clone()];
    let ctx = CallerContext {
        metadata: &metadata,
        peer_certs: Some(&certs),
        remote_addr: None,
    };
    let err = auth.authenticate(&ctx).await.unwrap_err();
    assert!(
        matches!(err, AuthError::CertificateNotCurrent { .. }),
        "{err}"
    );

    // With a valid token alongside, the token vouches instead.
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "authorization",
        format!("Bearer {OTHER_TOKEN}").parse().unwrap(),
    );
    let ctx = CallerContext {
        metadata: &metadata,
        peer_certs: Some(&certs),
        remote_addr: None,
    };
    assert_eq!(
        auth.authenticate(&ctx).await.unwrap(),
        id("default", "reviews")
    );
}

#[tokio::test]
async fn callers_are_rate_limited() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let ca = CaServer::start(
        &pki,
        tokens(),
        RateLimit {
            burst: 2,
            per_second: 0.01,
        },
        LeafPolicy::default(),
    )
    .await;
    let me = id("default", "productpage");
    let client = ca.client(Some(TOKEN), None);
    for _ in 0..2 {
        let (_k, csr) = csr_for(&me.to_uri());
        client.create_certificate(csr, None).await.unwrap();
    }
    let (_k, csr) = csr_for(&me.to_uri());
    let status = status_of(client.create_certificate(csr, None).await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    // Another caller has its own budget.
    let (_k, csr) = csr_for(&id("default", "reviews").to_uri());
    ca.client(Some(OTHER_TOKEN), None)
        .create_certificate(csr, None)
        .await
        .unwrap();
    assert_eq!(ca.issued_count("rate_limited"), 1);
    assert_eq!(ca.issued_count("issued"), 3);
}

#[test]
fn token_file_errors_name_the_line() {
    let err = TokenTable::parse("short default/x\n", TD, "tokens.txt").unwrap_err();
    assert!(err.to_string().contains("tokens.txt, line 1"), "{err}");
    let err = TokenTable::parse(
        "# ok\nabcdefghijklmnopqrstuvwxyz default-x\n",
        TD,
        "tokens.txt",
    )
    .unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}
