//! Peer verification: the trust bundle, rustls verifiers over real TLS, expired
//! and foreign-trust-domain peers, root rotation.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use isthmus_identity::ca::create_root;
use isthmus_identity::manager::{CertManager, CertManagerConfig};
use isthmus_identity::verify::{verify_chain, PeerRole};
use isthmus_identity::{
    peer_identity, static_bundle, tls, LeafPolicy, PeerPolicy, SpiffeId, TrustBundle, VerifyError,
};
use rustls_pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

async fn manager_for(pki: &Pki, who: SpiffeId, lifetime: Option<Duration>) -> CertManager {
    let authority = Arc::new(pki.authority(LeafPolicy::default()));
    let mut cfg = CertManagerConfig::new(who.clone());
    cfg.requested_lifetime = lifetime;
    let m = CertManager::start(cfg, Arc::new(FixedSigner(authority, who))).unwrap();
    m.wait_ready(Duration::from_secs(10)).await.unwrap();
    m
}

#[test]
fn bundle_merge_diff_and_dedup() {
    let a = Pki::new(TD, "a");
    let b = Pki::new(TD, "b");
    let mut ab = TrustBundle::from_pems([
        ("a", a.root.cert_pem.as_str()),
        ("b", b.root.cert_pem.as_str()),
    ])
    .unwrap();
    assert_eq!(ab.len(), 2);
    // Adding the same root again changes nothing.
    ab.add_pem(&a.root.cert_pem, "a again").unwrap();
    assert_eq!(ab.len(), 2);

    let only_a = a.bundle();
    let diff = only_a.diff(&ab);
    assert_eq!(diff.added.len(), 1);
    assert!(diff.removed.is_empty());
    assert!(ab.diff(&only_a).removed.len() == 1);

    let mut merged = only_a.clone();
    merged.merge(&b.bundle());
    assert_eq!(merged, ab);
    assert!(merged.diff(&ab).is_empty());

    // The PEM round-trips.
    let again = TrustBundle::from_pem(&ab.to_pem(), "round trip").unwrap();
    assert_eq!(again, ab);

    // A bad source leaves the bundle unchanged.
    let before = ab.clone();
    let bad = format!(
        "{}garbage\n-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        a.root.cert_pem
    );
    assert!(ab.add_pem(&bad, "bad").is_err());
    assert_eq!(ab, before);
}

#[tokio::test]
async fn expired_and_foreign_peers_are_refused() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let foreign = Pki::new("evil.example", "x");
    let stranger = Pki::new(TD, "stranger"); // same trust domain, unknown root
    let m = manager_for(&pki, id("default", "client"), None).await;
    let cert = m.current().unwrap();

    // Valid now.
    let bundle = pki.bundle();
    let got = verify_chain(
        &bundle,
        &cert.chain()[0],
        &cert.chain()[1..],
        UnixTime::now(),
        PeerRole::Client,
        &algs(),
    )
    .unwrap();
    assert_eq!(got, id("default", "client"));

    // Expired: the same chain two days later.
    let later = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            + Duration::from_secs(2 * 86400),
    );
    let err = verify_chain(
        &bundle,
        &cert.chain()[0],
        &cert.chain()[1..],
        later,
        PeerRole::Client,
        &algs(),
    )
    .unwrap_err();
    assert!(
        matches!(err, VerifyError::Chain(webpki::Error::CertExpired { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("validity"), "{err}");

    // Foreign trust domain: chains to a trusted root but the policy refuses it.
    let fm = manager_for(
        &foreign,
        SpiffeId::new("evil.example", "default", "client").unwrap(),
        None,
    )
    .await;
    let fcert = fm.current().unwrap();
    let mut both = pki.bundle();
    both.merge(&foreign.bundle());
    let fid = verify_chain(
        &both,
        &fcert.chain()[0],
        &fcert.chain()[1..],
        UnixTime::now(),
        PeerRole::Client,
        &algs(),
    )
    .unwrap();
    let err = PeerPolicy::trust_domain(TD).check(&fid).unwrap_err();
    assert!(
        matches!(err, VerifyError::ForeignTrustDomain { .. }),
        "{err}"
    );

    // Unknown root.
    let sm = manager_for(&stranger, id("default", "client"), None).await;
    let scert = sm.current().unwrap();
    let err = verify_chain(
        &bundle,
        &scert.chain()[0],
        &scert.chain()[1..],
        UnixTime::now(),
        PeerRole::Client,
        &algs(),
    )
    .unwrap_err();
    assert!(
        // Same subject name as the trusted root but another key: refused either way.
        matches!(
            err,
            VerifyError::Chain(
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey
            )
        ),
        "{err}"
    );

    // Exact identity policy.
    let policy = PeerPolicy::exactly([id("default", "server")]);
    assert!(matches!(
        policy.check(&id("default", "client")).unwrap_err(),
        VerifyError::UnexpectedIdentity { .. }
    ));
    assert!(policy.check(&id("default", "server")).is_ok());
}

/// One TLS exchange; returns the identity the server saw, or the error.
async fn handshake(
    server_cfg: Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
) -> Result<SpiffeId, String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server_cfg)
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(peer)
    });
    let client = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client_cfg)
            .connect(
                ServerName::try_from("outbound_.9080_._.reviews.default.svc.cluster.local")
                    .unwrap(),
                tcp,
            )
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("client: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client: {e}"))?;
        Ok::<_, String>(())
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .unwrap();
    let server_result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    match (client_result, server_result) {
        (Ok(()), Ok(peer)) => Ok(peer),
        (c, s) => Err(format!("{:?} / {:?}", c.err(), s.err())),
    }
}

#[tokio::test]
async fn mtls_over_tcp_checks_bundle_and_spiffe_id() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let foreign = Pki::new("evil.example", "x");
    let server = manager_for(&pki, id("default", "reviews"), None).await;
    let client = manager_for(&pki, id("default", "productpage"), None).await;
    let evil = manager_for(
        &foreign,
        SpiffeId::new("evil.example", "default", "productpage").unwrap(),
        None,
    )
    .await;

    let mut both = pki.bundle();
    both.merge(&foreign.bundle());
    let server_cfg = tls::server_config(
        server.subscribe(),
        static_bundle(both.clone()),
        PeerPolicy::trust_domain(TD),
        true,
        &[],
    )
    .unwrap();

    // The expected server identity is checked instead of the SNI.
    let good_client = tls::client_config(
        Some(client.subscribe()),
        static_bundle(pki.bundle()),
        PeerPolicy::exactly([id("default", "reviews")]),
        &[],
    )
    .unwrap();
    let seen = handshake(server_cfg.clone(), good_client).await.unwrap();
    assert_eq!(seen, id("default", "productpage"));

    // Wrong expected server identity: the client aborts.
    let wrong_expectation = tls::client_config(
        Some(client.subscribe()),
        static_bundle(pki.bundle()),
        PeerPolicy::exactly([id("default", "ratings")]),
        &[],
    )
    .unwrap();
    let err = handshake(server_cfg.clone(), wrong_expectation)
        .await
        .unwrap_err();
    assert!(err.contains("not among the expected identities"), "{err}");

    // Foreign trust domain client (its root is even in the bundle): refused by the server.
    let evil_client = tls::client_config(
        Some(evil.subscribe()),
        static_bundle(pki.bundle()),
        PeerPolicy::trust_domain(TD),
        &[],
    )
    .unwrap();
    let err = handshake(server_cfg.clone(), evil_client)
        .await
        .unwrap_err();
    assert!(
        err.contains("server:") && err.contains("evil.example"),
        "{err}"
    );

    // No client certificate while one is required.
    let anonymous = tls::client_config(
        None,
        static_bundle(pki.bundle()),
        PeerPolicy::trust_domain(TD),
        &[],
    )
    .unwrap();
    assert!(handshake(server_cfg.clone(), anonymous).await.is_err());
}

#[tokio::test]
async fn root_rotation_keeps_traffic_flowing() {
    init_crypto();
    // Step 0: old root only; both workloads under it.
    let old = Pki::new(TD, "east");
    let new_root = create_root(&Default::default()).unwrap();
    let new = Pki::under(new_root, TD, "east");
    let (bundle_tx, bundle_rx) = tokio::sync::watch::channel(Arc::new(old.bundle()));

    let server_old = manager_for(&old, id("default", "reviews"), None).await;
    let client_old = manager_for(&old, id("default", "productpage"), None).await;
    let server_cfg = |m: &CertManager| {
        tls::server_config(
            m.subscribe(),
            bundle_rx.clone(),
            PeerPolicy::trust_domain(TD),
            true,
            &[],
        )
        .unwrap()
    };
    let client_cfg = |m: &CertManager| {
        tls::client_config(
            Some(m.subscribe()),
            bundle_rx.clone(),
            PeerPolicy::trust_domain(TD),
            &[],
        )
        .unwrap()
    };
    handshake(server_cfg(&server_old), client_cfg(&client_old))
        .await
        .unwrap();

    // Step 1: add the new root to the bundle; old certificates keep working.
    let mut both = old.bundle();
    both.merge(&new.bundle());
    bundle_tx.send_replace(Arc::new(both));
    handshake(server_cfg(&server_old), client_cfg(&client_old))
        .await
        .unwrap();

    // Step 2: intermediates re-issued under the new root; a mix of old and new leaves interoperates.
    let server_new = manager_for(&new, id("default", "reviews"), None).await;
    let client_new = manager_for(&new, id("default", "productpage"), None).await;
    handshake(server_cfg(&server_new), client_cfg(&client_old))
        .await
        .unwrap();
    handshake(server_cfg(&server_old), client_cfg(&client_new))
        .await
        .unwrap();
    handshake(server_cfg(&server_new), client_cfg(&client_new))
        .await
        .unwrap();

    // Step 3: retire the old root; new leaves work, old ones are refused.
    bundle_tx.send_replace(Arc::new(new.bundle()));
    handshake(server_cfg(&server_new), client_cfg(&client_new))
        .await
        .unwrap();
    let err = handshake(server_cfg(&server_new), client_cfg(&client_old))
        .await
        .unwrap_err();
    assert!(err.contains("server:"), "{err}");
}
