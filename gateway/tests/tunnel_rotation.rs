//! A root rotation under the QUIC tunnel between east-west gateways.
//!
//! The tunnel is established with certificates under root R1. Both peers
//! then trust R1+R2 (step 1 of the rotation) and their certificates move to
//! intermediates under R2 (step 2): the open connection keeps carrying new
//! streams, and new tunnel handshakes in both directions succeed with the
//! R2 certificates. When the peers retire R1 (step 3), a gateway still
//! presenting an R1 certificate is refused, which shows each handshake
//! reads the current trust rather than the one the endpoint started with.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_gateway::tls::WorkloadCertificate;
use isthmus_gateway::tunnel::{self, read_header, write_header, TunnelConfig};
use rustls::pki_types::CertificateDer;
use support::pki::Ca;
use support::{any_port, init};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const GW: &str = "spiffe://cluster.local/ns/istio-system/sa";
const STEP: Duration = Duration::from_secs(10);

/// A gateway's certificate source, re-issued by the test as the rotation goes on.
struct Peer {
    cert: watch::Sender<Arc<WorkloadCertificate>>,
    endpoint: quinn::Endpoint,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.server.abort();
        self.endpoint.close(0u32.into(), b"test over");
    }
}

fn workload(issuer: &Ca, name: &str, trust: &[&Ca]) -> Arc<WorkloadCertificate> {
    let (chain, key) = issuer.leaf(&format!("{GW}/{name}"));
    let trust = trust.iter().map(|r| r.der.clone()).collect();
    Arc::new(WorkloadCertificate::new(chain, key, trust).expect("workload certificate"))
}

/// Names the intermediate a peer's chain was issued by, so replies show
/// which certificate a handshake actually used.
fn issuer_of(
    conn: &quinn::Connection,
    intermediates: &[(&str, CertificateDer<'static>)],
) -> String {
    let chain = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .expect("the tunnel peer presented a certificate chain");
    intermediates
        .iter()
        .find(|(_, der)| chain.get(1) == Some(der))
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Starts an endpoint that answers every tunnel stream with
/// `"<sni>:<port> from <issuer of the client's certificate>"`.
fn peer(
    first: Arc<WorkloadCertificate>,
    intermediates: Vec<(&'static str, CertificateDer<'static>)>,
) -> Peer {
    let (tx, rx) = watch::channel(first);
    let endpoint = tunnel::endpoint(TunnelConfig { bind: any_port() }, &rx).expect("endpoint");
    let ep = endpoint.clone();
    let intermediates = Arc::new(intermediates);
    let server = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let intermediates = intermediates.clone();
            tokio::spawn(async move {
                // A refused handshake just ends here; the client sees it.
                let Ok(conn) = incoming.await else { return };
                let from = issuer_of(&conn, &intermediates);
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let from = from.clone();
                    tokio::spawn(async move {
                        let Ok((sni, port)) = read_header(&mut recv).await else {
                            return;
                        };
                        let reply = format!("{sni}:{port} from {from}");
                        let _ = send.write_all(reply.as_bytes()).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    Peer {
        cert: tx,
        endpoint,
        server,
    }
}

fn addr(p: &Peer) -> SocketAddr {
    p.endpoint.local_addr().expect("local addr")
}

/// A new tunnel connection from `from` to `to`.
async fn connect(from: &Peer, to: &Peer) -> Result<quinn::Connection, String> {
    let connecting = from
        .endpoint
        .connect(addr(to), "isthmus-tunnel")
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(STEP, connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())
}

/// One tunnel stream: the header, then the peer's reply.
async fn call(conn: &quinn::Connection, sni: &str) -> Result<String, String> {
    tokio::time::timeout(STEP, async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_header(&mut send, sni, 15443)
            .await
            .map_err(|e| e.to_string())?;
        send.flush().await.map_err(|e| e.to_string())?;
        let mut reply = String::new();
        recv.read_to_string(&mut reply)
            .await
            .map_err(|e| e.to_string())?;
        if reply.is_empty() {
            return Err("the stream closed without a reply".to_string());
        }
        Ok(reply)
    })
    .await
    .map_err(|_| "no reply in time".to_string())?
}

/// A new connection and one stream on it.
async fn connect_and_call(from: &Peer, to: &Peer, sni: &str) -> Result<String, String> {
    let conn = connect(from, to).await?;
    call(&conn, sni).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_keeps_working_through_a_root_rotation() {
    init();
    let (r1, r2) = (Ca::root(), Ca::root());
    let (a1, b1) = (r1.intermediate("a-under-r1"), r1.intermediate("b-under-r1"));
    let (a2, b2) = (r2.intermediate("a-under-r2"), r2.intermediate("b-under-r2"));
    let names = vec![
        ("a1", a1.der.clone()),
        ("b1", b1.der.clone()),
        ("a2", a2.der.clone()),
        ("b2", b2.der.clone()),
    ];
    let a = peer(workload(&a1, "eastwest-a", &[&r1]), names.clone());
    let b = peer(workload(&b1, "eastwest-b", &[&r1]), names.clone());

    // Before the rotation: the tunnel is up with R1 certificates.
    let established = connect(&a, &b).await.expect("tunnel under R1");
    assert_eq!(
        call(&established, "s0").await.as_deref(),
        Ok("s0:15443 from a1")
    );

    // Step 1: both trust R1+R2, certificates still under R1.
    a.cert
        .send_replace(workload(&a1, "eastwest-a", &[&r1, &r2]));
    b.cert
        .send_replace(workload(&b1, "eastwest-b", &[&r1, &r2]));
    assert_eq!(
        connect_and_call(&a, &b, "s1").await.as_deref(),
        Ok("s1:15443 from a1")
    );

    // Step 2: both certificates move to intermediates under R2. A gateway
    // that has not seen the new root yet (trusting R1 only, as the
    // endpoint's first certificate did) refuses them: that is what the
    // tunnel would do without following the trust bundle.
    a.cert
        .send_replace(workload(&a2, "eastwest-a", &[&r1, &r2]));
    b.cert
        .send_replace(workload(&b2, "eastwest-b", &[&r1, &r2]));
    let stale = peer(workload(&a1, "eastwest-c", &[&r1]), names.clone());
    let refused = connect_and_call(&stale, &b, "stale").await;
    assert!(
        refused.is_err(),
        "a peer trusting only R1 must refuse B's R2 certificate, got {refused:?}"
    );

    // The tunnel established under R1 keeps carrying new streams.
    for i in 0..5 {
        assert_eq!(
            call(&established, &format!("old-{i}")).await,
            Ok(format!("old-{i}:15443 from a1")),
            "stream {i} on the connection established under R1"
        );
    }
    // New connections, both directions, use and accept the R2 certificates.
    assert_eq!(
        connect_and_call(&a, &b, "s2").await.as_deref(),
        Ok("s2:15443 from a2")
    );
    assert_eq!(
        connect_and_call(&b, &a, "s2-back").await.as_deref(),
        Ok("s2-back:15443 from b2")
    );

    // Step 3: R1 retired. A gateway still presenting an R1 certificate is
    // refused; the R2 peers keep talking.
    a.cert.send_replace(workload(&a2, "eastwest-a", &[&r2]));
    b.cert.send_replace(workload(&b2, "eastwest-b", &[&r2]));
    let old = peer(workload(&a1, "eastwest-old", &[&r1, &r2]), names);
    let refused = connect_and_call(&old, &b, "old-root").await;
    assert!(
        refused.is_err(),
        "B retired R1 and must refuse an R1 certificate, got {refused:?}"
    );
    assert_eq!(
        connect_and_call(&a, &b, "s3").await.as_deref(),
        Ok("s3:15443 from a2")
    );
}

async fn published(rx: &mut watch::Receiver<Arc<isthmus_identity::TrustBundle>>, n: usize) {
    tokio::time::timeout(support::WAIT, rx.wait_for(|b| b.len() == n))
        .await
        .unwrap_or_else(|_| panic!("a ROOTCA bundle of {n} roots is published"))
        .expect("publisher alive");
}

/// A pure SNI-passthrough east-west gateway references no secret, yet with a
/// certificate it subscribes to `ROOTCA` (its control-plane trust must follow
/// a root rotation), becomes ready without it, and publishes every bundle
/// it accepts.
async fn passthrough_gateway_follows_rootca(delta: bool) {
    use isthmus_gateway::{Gateway, GatewayConfig};
    use support::ads::ScriptedAds;
    use support::resources::*;

    init();
    let (r1, r2) = (Ca::root(), Ca::root());
    let inter = r1.intermediate("cluster-a");
    let ads = if delta {
        ScriptedAds::start_delta().await
    } else {
        ScriptedAds::start().await
    };
    let sni = "outbound_.9080_._.reviews.default.svc.cluster.local";
    ads.set(CDS, vec![named(sni, eds_cluster(sni))]);
    // Never dialled: only the configuration matters here.
    let backend = SocketAddr::from(([127, 0, 0, 1], 9));
    ads.set(EDS, vec![named(sni, cla(sni, &[(0, &[backend])]))]);
    ads.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", any_port(), &[(sni, sni)]),
        )],
    );
    let (_cert_tx, cert) = inter.workload(&r1, &format!("{GW}/eastwest-a"));
    let (roots_tx, mut roots) = watch::channel(Arc::new(isthmus_identity::TrustBundle::new()));
    let mut cfg = GatewayConfig::new(
        ads.url(),
        support::node(
            "router~127.0.0.1~ew.istio-system~istio-system.svc.cluster.local",
            "east-west",
        ),
        any_port(),
    );
    cfg.cert = Some(cert);
    cfg.mesh_roots = Some(roots_tx);
    let gw = Gateway::start(cfg).await.expect("east-west start");
    assert!(
        gw.wait_ready(support::WAIT).await,
        "ready although the control plane has not sent ROOTCA"
    );
    let subscribed = if delta {
        ads.wait_delta(support::WAIT, |r| {
            r.type_url == SDS && r.resource_names_subscribe.iter().any(|n| n == "ROOTCA")
        })
        .await
        .is_some()
    } else {
        ads.wait_request(support::WAIT, |r| {
            r.type_url == SDS && r.resource_names.iter().any(|n| n == "ROOTCA")
        })
        .await
        .is_some()
    };
    assert!(subscribed, "the east-west gateway subscribes to ROOTCA");
    assert!(roots.borrow().is_empty());

    ads.set(SDS, vec![named("ROOTCA", rootca(&r1.pem))]);
    published(&mut roots, 1).await;
    ads.set(
        SDS,
        vec![named("ROOTCA", rootca(&format!("{}{}", r1.pem, r2.pem)))],
    );
    published(&mut roots, 2).await;
    assert!(gw.wait_ready(support::WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_east_west_subscribes_to_rootca_sotw() {
    passthrough_gateway_follows_rootca(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_east_west_subscribes_to_rootca_delta() {
    passthrough_gateway_follows_rootca(true).await;
}
