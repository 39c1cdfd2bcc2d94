//! The thin cross-cluster path of docs/architecture.md with real sockets
//! and real TLS, every proxy configured only through ADS:
//! app → sidecar A outbound (mTLS origination, mesh SNI) → east-west
//! gateway of B (SNI passthrough, no keys) → tap → sidecar B inbound (mTLS
//! termination, STRICT) → app.

mod support;

use std::sync::Arc;

use isthmus_gateway::tls::sni::{inspect, Inspection};
use support::ads::ScriptedAds;
use support::pki::Ca;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "spiffe://cluster.local/ns/default/sa";
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";
const SNI: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_cluster_call_is_mtls_end_to_end_through_passthrough() {
    init();
    let root = Ca::root();
    let inter_a = root.intermediate("cluster-a");
    let inter_b = root.intermediate("cluster-b");
    let productpage = format!("{TD}/productpage");
    let reviews = format!("{TD}/reviews");

    // Cluster B: the app and its sidecar (inbound, STRICT).
    let app = Backend::start("reviews-v1").await;
    let ads_b = ScriptedAds::start().await;
    script_inbound_sidecar(&ads_b, &root.pem, app.addr, &[&productpage]);
    let (_cert_b_tx, cert_b) = inter_b.workload(&root, &reviews);
    let sidecar_b = gateway(&ads_b, "sidecar", Some(cert_b)).await;
    assert!(
        sidecar_b.wait_ready(WAIT).await,
        "sidecar B never became ready"
    );
    let inbound = sidecar_b
        .listener_address("virtualInbound")
        .expect("inbound bound");
    let tap = Tap::start(inbound).await;

    // Cluster B's east-west gateway: no certificate at all.
    let ads_ew = ScriptedAds::start().await;
    ads_ew.set(CDS, vec![named(SNI, eds_cluster(SNI))]);
    ads_ew.set(EDS, vec![named(SNI, cla(SNI, &[(0, &[tap.addr])]))]);
    ads_ew.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", any_port(), &[(SNI, SNI)]),
        )],
    );
    let eastwest = gateway(&ads_ew, "east-west", None).await;
    assert!(
        eastwest.wait_ready(WAIT).await,
        "east-west gateway never became ready"
    );
    let ew_addr = eastwest.listener_address("ew").expect("ew bound");

    // Cluster A: the caller's sidecar (outbound).
    let ads_a = ScriptedAds::start().await;
    ads_a.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads_a.set(
        CDS,
        vec![named(CLUSTER, mtls_cluster(CLUSTER, SNI, &[&reviews]))],
    );
    ads_a.set(EDS, vec![named(CLUSTER, cla(CLUSTER, &[(0, &[ew_addr])]))]);
    ads_a.set(
        LDS,
        vec![named(
            "outbound_reviews",
            outbound_listener("outbound_reviews", any_port(), CLUSTER),
        )],
    );
    let (_cert_a_tx, cert_a) = inter_a.workload(&root, &productpage);
    let sidecar_a = gateway(&ads_a, "sidecar", Some(cert_a)).await;
    assert!(
        sidecar_a.wait_ready(WAIT).await,
        "sidecar A never became ready"
    );
    let outbound = sidecar_a
        .listener_address("outbound_reviews")
        .expect("outbound bound");

    let marker = "plaintext-marker-7f3a9c";
    let reply = roundtrip(outbound, marker)
        .await
        .expect("cross-cluster call");
    assert_eq!(reply, format!("reviews-v1:{marker}"));

    // What crossed the network between the gateway and sidecar B is TLS
    // with the mesh SNI, and never the plaintext.
    let up = tap.to_server.lock().expect("lock").clone();
    let down = tap.to_client.lock().expect("lock").clone();
    assert!(
        matches!(inspect(&up), Inspection::Tls { sni: Some(ref s), .. } if s == SNI),
        "not a ClientHello with the mesh SNI"
    );
    assert_eq!(
        down.first(),
        Some(&0x16),
        "server side did not answer with a TLS handshake"
    );
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&up, marker.as_bytes()),
        "plaintext visible between gateway and sidecar"
    );
    assert!(
        !contains(&down, b"reviews-v1"),
        "plaintext reply visible between sidecar and gateway"
    );

    // Each end verified the other's SPIFFE identity.
    let (_, mb) = admin_get(sidecar_b.admin_address(), "/metrics").await;
    assert!(
        mb.lines().any(
            |l| l.starts_with("isthmus_gateway_tcp_connections_opened_total")
                && l.contains(&format!("source_principal=\"{productpage}\""))
        ),
        "sidecar B did not see the caller's identity:\n{mb}"
    );
    let (_, ma) = admin_get(sidecar_a.admin_address(), "/metrics").await;
    assert!(
        ma.lines().any(
            |l| l.starts_with("isthmus_gateway_tcp_connections_opened_total")
                && l.contains(&format!("destination_principal=\"{reviews}\""))
        ),
        "sidecar A did not see the server's identity:\n{ma}"
    );
    let (_, mew) = admin_get(eastwest.admin_address(), "/metrics").await;
    assert!(
        mew.lines().any(
            |l| l.starts_with("isthmus_gateway_tcp_connections_opened_total")
                && l.contains("source_principal=\"unknown\"")
                && l.contains("destination_principal=\"unknown\"")
        ),
        "east-west gateway must not see identities (it never terminates TLS):\n{mew}"
    );

    // A caller expecting a different server identity refuses the connection.
    ads_a.set(
        CDS,
        vec![named(
            CLUSTER,
            mtls_cluster(CLUSTER, SNI, &[&format!("{TD}/ratings")]),
        )],
    );
    assert!(ads_a.wait_ack(CDS, WAIT).await);
    assert!(
        roundtrip(outbound, "x").await.is_err(),
        "wrong server identity was accepted"
    );
    ads_a.set(
        CDS,
        vec![named(CLUSTER, mtls_cluster(CLUSTER, SNI, &[&reviews]))],
    );
    assert!(ads_a.wait_ack(CDS, WAIT).await);
    eventually_reply(outbound, "again", "reviews-v1:").await;

    // Sidecar B refuses a client whose identity is not allowed, and a
    // client without a certificate (STRICT).
    let intruder = inter_a.leaf(&format!("{TD}/intruder"));
    assert!(
        direct_mtls(inbound, &root, Some(intruder)).await.is_err(),
        "unauthorised identity accepted"
    );
    assert!(
        direct_mtls(inbound, &root, None).await.is_err(),
        "client without certificate accepted in STRICT"
    );
    let allowed = inter_a.leaf(&productpage);
    assert_eq!(
        direct_mtls(inbound, &root, Some(allowed))
            .await
            .expect("allowed identity"),
        "reviews-v1:direct"
    );
}

/// Connects straight to a sidecar inbound with rustls, as a mesh client would.
async fn direct_mtls(
    addr: std::net::SocketAddr,
    root: &Ca,
    client: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> std::io::Result<String> {
    // The server presents a SPIFFE-only certificate; verify the chain only.
    let verifier = Arc::new(
        isthmus_gateway::tls::SpiffeVerifier::new(std::slice::from_ref(&root.der), vec![])
            .expect("verifier"),
    );
    let builder = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(SNI.to_string()).expect("sni");
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"direct").await?;
    tls.shutdown().await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    if out.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "closed",
        ));
    }
    Ok(out)
}
