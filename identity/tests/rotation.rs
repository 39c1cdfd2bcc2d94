//! Rotation under traffic: a client and a server whose certificates live two
//! seconds exchange requests for twenty seconds over real TLS and TCP, with
//! certificates from the real gRPC CA, and not one request fails.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use isthmus_identity::manager::{CertManager, CertManagerConfig};
use isthmus_identity::service::RateLimit;
use isthmus_identity::{peer_identity, static_bundle, tls, LeafPolicy, PeerPolicy, TrustBundle};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use x509_parser::prelude::{FromDer, X509Certificate};

const SERVER_TOKEN: &str = "bootstrap-token-server-0123456789abcdef";
const CLIENT_TOKEN: &str = "bootstrap-token-client-0123456789abcdef";
const RUN_FOR: Duration = Duration::from_secs(20);
const LIFETIME: Duration = Duration::from_secs(2);

fn serial_of(der: &[u8]) -> String {
    let (_, c) = X509Certificate::from_der(der).unwrap();
    c.raw_serial_as_string()
}

fn start_manager(
    ca: &CaServer,
    who: isthmus_identity::SpiffeId,
    token: &'static str,
) -> CertManager {
    let mut cfg = CertManagerConfig::new(who);
    cfg.requested_lifetime = Some(LIFETIME);
    cfg.initial_backoff = Duration::from_millis(50);
    cfg.max_backoff = Duration::from_millis(400);
    let ca_client = |watch| -> Arc<dyn isthmus_identity::CertificateSigner> {
        Arc::new(ca.client(Some(token), Some(watch)))
    };
    CertManager::start_with(cfg, ca_client).unwrap()
}

async fn echo_once<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    n: u64,
) -> std::io::Result<()> {
    s.write_all(&n.to_be_bytes()).await?;
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).await?;
    if u64::from_be_bytes(buf) != n {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_certificates_rotate_under_traffic_without_failures() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let ca = CaServer::start(
        &pki,
        TokenTable::parse(
            &format!("{SERVER_TOKEN} default/server\n{CLIENT_TOKEN} default/client\n"),
            TD,
            "tokens",
        )
        .unwrap(),
        RateLimit {
            burst: 50,
            per_second: 20.0,
        },
        LeafPolicy {
            default_lifetime: LIFETIME,
            max_lifetime: LIFETIME,
        },
    )
    .await;
    let server_id = id("default", "server");
    let client_id = id("default", "client");
    let server_certs = start_manager(&ca, server_id.clone(), SERVER_TOKEN);
    let client_certs = start_manager(&ca, client_id.clone(), CLIENT_TOKEN);
    server_certs
        .wait_ready(Duration::from_secs(10))
        .await
        .unwrap();
    client_certs
        .wait_ready(Duration::from_secs(10))
        .await
        .unwrap();

    let bundle: TrustBundle = pki.bundle();
    let server_cfg = tls::server_config(
        server_certs.subscribe(),
        static_bundle(bundle.clone()),
        PeerPolicy::exactly([client_id.clone()]),
        true,
        &[],
    )
    .unwrap();
    let client_cfg = tls::client_config(
        Some(client_certs.subscribe()),
        static_bundle(bundle),
        PeerPolicy::exactly([server_id.clone()]),
        &[],
    )
    .unwrap();

    // Echo server: records the client certificate each handshake saw.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Result<String, String>>();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = seen_tx.send(Err(format!("server handshake: {e}")));
                        return;
                    }
                };
                let conn = tls.get_ref().1;
                let seen = match peer_identity(conn) {
                    Ok(who) => Ok(format!(
                        "{who} {}",
                        serial_of(&conn.peer_certificates().unwrap()[0])
                    )),
                    Err(e) => Err(e.to_string()),
                };
                let _ = seen_tx.send(seen);
                let mut buf = [0u8; 8];
                while tls.read_exact(&mut buf).await.is_ok() {
                    if tls.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _server = AbortOnDrop(server);

    let connector = tokio_rustls::TlsConnector::from(client_cfg);
    let sni = ServerName::try_from("outbound_.8080_._.server.default.svc.cluster.local").unwrap();
    let connect = || {
        let connector = connector.clone();
        let sni = sni.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            connector.connect(sni, tcp).await
        }
    };

    // One connection established before any rotation, used throughout.
    let mut long_lived = connect().await.unwrap();
    let deadline = Instant::now() + RUN_FOR;
    let mut failures = Vec::new();
    let mut requests = 0u64;
    let mut server_serials = BTreeSet::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        // Established connection: must survive every rotation.
        match echo_once(&mut long_lived, n).await {
            Ok(()) => requests += 1,
            Err(e) => failures.push(format!("long-lived request {n}: {e}")),
        }
        // Fresh connection: must pick up the current certificates on both sides.
        match connect().await {
            Ok(mut tls) => {
                let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
                server_serials.insert(serial_of(leaf));
                match echo_once(&mut tls, n).await {
                    Ok(()) => requests += 1,
                    Err(e) => failures.push(format!("new-connection request {n}: {e}")),
                }
            }
            Err(e) => failures.push(format!("handshake {n}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    drop(long_lived);

    let mut client_serials = BTreeSet::new();
    while let Ok(seen) = seen_rx.try_recv() {
        match seen {
            Ok(s) => {
                assert!(s.starts_with(&client_id.to_string()), "server saw {s}");
                client_serials.insert(s);
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "{requests} requests, {} server certificates, {} client certificates, {} failures",
        server_serials.len(),
        client_serials.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(requests > 50, "only {requests} requests were exchanged");
    // Twenty seconds of two-second certificates: at least eight rotations each
    // (a rotation that silently did not happen would fail here).
    assert!(
        server_serials.len() >= 8,
        "server certificate rotated only {} times",
        server_serials.len()
    );
    assert!(
        client_serials.len() >= 8,
        "client certificate rotated only {} times",
        client_serials.len()
    );
    assert!(ca.issued_count("issued") >= 16);
}

use isthmus_identity::TokenTable;
