//! Certificate rotation without dropping connections, and graceful drain.

mod support;

use std::sync::Arc;
use std::time::Duration;

use isthmus_gateway::WorkloadCertificate;
use support::ads::ScriptedAds;
use support::pki::Ca;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TlsClient = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn mtls_connect(addr: std::net::SocketAddr, root: &Ca, client: &Ca, id: &str) -> TlsClient {
    let verifier = Arc::new(
        isthmus_gateway::tls::SpiffeVerifier::new(std::slice::from_ref(&root.der), vec![])
            .expect("verifier"),
    );
    let (chain, key) = client.leaf(id);
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name =
        rustls::pki_types::ServerName::try_from("outbound_.80_._.app.default.svc.cluster.local")
            .expect("sni");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake")
}

fn leaf_of(s: &TlsClient) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("server certs")[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_established_connections() {
    init();
    let root = Ca::root();
    let inter = root.intermediate("c");
    let app = Backend::start("app").await;
    let caller = "spiffe://cluster.local/ns/default/sa/caller";
    let ads = ScriptedAds::start().await;
    ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads.set(
        CDS,
        vec![named("inbound|80||", eds_cluster("inbound|80||"))],
    );
    ads.set(
        EDS,
        vec![named(
            "inbound|80||",
            cla("inbound|80||", &[(0, &[app.addr])]),
        )],
    );
    ads.set(
        LDS,
        vec![named(
            "in",
            inbound_listener("in", any_port(), "inbound|80||", &[caller], false),
        )],
    );
    let me = "spiffe://cluster.local/ns/default/sa/app";
    let (cert_tx, cert) = inter.workload(&root, me);
    let gw = gateway(&ads, "sidecar", Some(cert)).await;
    assert!(gw.wait_ready(WAIT).await);
    let inbound = gw.listener_address("in").expect("bound");

    let mut old = mtls_connect(inbound, &root, &inter, caller).await;
    old.write_all(b"old-").await.expect("write");
    let first_leaf = leaf_of(&old);

    // The certificate manager rotates the workload certificate.
    let (chain, key) = inter.leaf(me);
    let rotated =
        WorkloadCertificate::new(chain.clone(), key, vec![root.der.clone()]).expect("cert");
    cert_tx.send_replace(Arc::new(rotated));

    let mut new = mtls_connect(inbound, &root, &inter, caller).await;
    assert_eq!(
        leaf_of(&new),
        chain[0].as_ref().to_vec(),
        "new handshakes must use the rotated certificate"
    );
    assert_ne!(first_leaf, leaf_of(&new));
    new.write_all(b"new").await.expect("write");
    new.shutdown().await.expect("shutdown");
    let mut r = String::new();
    new.read_to_string(&mut r).await.expect("read");
    assert_eq!(r, "app:new");

    // The connection made before the rotation is untouched.
    old.write_all(b"still-open").await.expect("write");
    old.shutdown().await.expect("shutdown");
    let mut r = String::new();
    old.read_to_string(&mut r).await.expect("read");
    assert_eq!(r, "app:old-still-open");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_open_connections() {
    let app = Backend::start("app").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[app.addr])]))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");
    let admin = gw.admin_address();

    let mut open = tokio::net::TcpStream::connect(out).await.expect("connect");
    open.write_all(b"a").await.expect("write");
    // Make sure the connection is proxied before shutdown begins.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = admin_get(admin, "/metrics").await;
        if metric(&m, "isthmus_gateway_upstream_cx_active{cluster=\"svc\"}") == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shutdown = tokio::spawn(gw.shutdown());
    // New connections are refused once the listener is closed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(out).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting during drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for the open connection"
    );
    open.write_all(b"b").await.expect("write");
    open.shutdown().await.expect("shutdown");
    let mut r = String::new();
    open.read_to_string(&mut r).await.expect("read");
    assert_eq!(r, "app:ab");
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("drain finished")
        .expect("join");
}
