//! Tunnel resumption and 0-RTT between two east-west gateways, through the
//! gateway's own tunnel client and server handshake code over real QUIC.
//!
//! A second connection to a peer resumes and sends its first stream as
//! 0-RTT data, which the peer serves; a peer that lost the ticket (its
//! certificate changed, which drops its session cache) refuses the early
//! data, and the stream, larger than what is kept for a replay in one go,
//! is sent again transparently; a gateway whose own certificate changed
//! resumes nothing.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isthmus_gateway::metrics::Metrics;
use isthmus_gateway::tls::WorkloadCertificate;
use isthmus_gateway::tunnel::{self, read_header, TunnelClient, TunnelConfig, TunnelVerifier};
use support::pki::Ca;
use support::{any_port, init};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const GW: &str = "spiffe://cluster.local/ns/istio-system/sa";
const STEP: Duration = Duration::from_secs(10);

fn workload(issuer: &Ca, root: &Ca, name: &str) -> Arc<WorkloadCertificate> {
    let (chain, key) = issuer.leaf(&format!("{GW}/{name}"));
    Arc::new(WorkloadCertificate::new(chain, key, vec![root.der.clone()]).expect("certificate"))
}

/// FNV-1a: the server's digest of what a stream carried, in order.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The peer gateway: accepts with the gateway's handshake code and answers
/// each stream with its header and the length and digest of its bytes.
struct Server {
    cert: watch::Sender<Arc<WorkloadCertificate>>,
    endpoint: quinn::Endpoint,
    conns: Arc<Mutex<Vec<quinn::Connection>>>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        self.endpoint.close(0u32.into(), b"test over");
    }
}

impl Server {
    fn start(first: Arc<WorkloadCertificate>) -> Self {
        let (tx, rx) = watch::channel(first);
        let endpoint = tunnel::endpoint(TunnelConfig { bind: any_port() }, &rx).expect("endpoint");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (ep, m, c) = (endpoint.clone(), metrics.clone(), conns.clone());
        let task = tokio::spawn(async move {
            let verifier = Arc::new(TunnelVerifier::new(rx));
            while let Some(incoming) = ep.accept().await {
                let (verifier, m, c) = (verifier.clone(), m.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(conn) = tunnel::accept(incoming, &verifier, &m).await else {
                        return;
                    };
                    c.lock().expect("conns").push(conn.clone());
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let Ok((sni, port)) = read_header(&mut recv).await else {
                                return;
                            };
                            let Ok(body) = recv.read_to_end(1 << 20).await else {
                                return;
                            };
                            let reply = format!("{sni}:{port} {} {:x}", body.len(), digest(&body));
                            let _ = send.write_all(reply.as_bytes()).await;
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        });
        Self {
            cert: tx,
            endpoint,
            conns,
            metrics,
            task,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("local addr")
    }

    /// Closes every tunnel connection (as the peer going idle would), and
    /// returns once the client has surely seen the close.
    async fn close_connections(&self) {
        for c in self.conns.lock().expect("conns").drain(..) {
            c.close(0u32.into(), b"closed by the test");
        }
        tokio::time::timeout(STEP, self.endpoint.wait_idle())
            .await
            .expect("connections drained");
    }
}

/// A UDP path to `server` on which the server's packets reach the client
/// `delay` late, so that every handshake takes a real round trip and the
/// client's early data is written while it runs. Returns the address the
/// client sends to.
async fn slow_path(server: SocketAddr, delay: Duration) -> SocketAddr {
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let back = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    back.connect(server).await.expect("connect");
    let addr = front.local_addr().expect("addr");
    let client = Arc::new(Mutex::new(None));
    let (f, b, c) = (front.clone(), back.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().expect("client") = Some(from);
            let _ = b.send(&buf[..n]).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            let packet = buf[..n].to_vec();
            let to = *client.lock().expect("client");
            let front = front.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(to) = to {
                    let _ = front.send_to(&packet, to).await;
                }
            });
        }
    });
    addr
}

fn count(m: &Metrics, side: &str, kind: &str) -> u64 {
    m.tunnel_handshakes_total
        .with_label_values(&[side, kind])
        .get()
}

/// Waits for a counter that a handshake's background task sets.
async fn eventually(m: &Metrics, side: &str, kind: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + STEP;
    while count(m, side, kind) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{side} {kind} handshakes: {} (want {want})",
            count(m, side, kind)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One proxied connection through the tunnel: `body` up, the reply back.
async fn call(client: &TunnelClient, to: SocketAddr, sni: &str, body: &[u8]) -> String {
    tokio::time::timeout(STEP, async {
        let mut io = client
            .open(to, sni, 15443, STEP)
            .await
            .expect("tunnel stream");
        io.write_all(body).await.expect("write");
        io.shutdown().await.expect("shutdown");
        let mut reply = String::new();
        io.read_to_string(&mut reply).await.expect("reply");
        reply
    })
    .await
    .expect("reply in time")
}

fn expect(sni: &str, body: &[u8]) -> String {
    format!("{sni}:15443 {} {:x}", body.len(), digest(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_resumes_with_0rtt_and_replays_refused_early_data() {
    init();
    let root = Ca::root();
    let inter = root.intermediate("east-west");
    let server = Server::start(workload(&inter, &root, "eastwest-b"));
    let (client_cert, rx) = watch::channel(workload(&inter, &root, "eastwest-a"));
    let endpoint = tunnel::endpoint(TunnelConfig { bind: any_port() }, &rx).expect("endpoint");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let client = TunnelClient::new(endpoint.clone(), metrics.clone());
    let to = slow_path(server.addr(), Duration::from_millis(100)).await;

    // First contact: a full handshake; the peer issues a ticket.
    let small = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    assert_eq!(
        call(&client, to, "first", &small).await,
        expect("first", &small)
    );
    assert_eq!(count(&metrics, "client", "full"), 1);
    eventually(&server.metrics, "server", "full", 1).await;

    // The connection ends (not by a timeout): the next one resumes, and
    // its first stream goes out as 0-RTT data, which the peer serves.
    server.close_connections().await;
    assert_eq!(
        call(&client, to, "resumed", &small).await,
        expect("resumed", &small)
    );
    eventually(&metrics, "client", "0rtt_accepted", 1).await;
    eventually(&server.metrics, "server", "resumed", 1).await;
    // The peer sends its next ticket once the handshake has finished, which
    // the 0-RTT stream did not wait for; a stream after it does.
    assert_eq!(
        call(&client, to, "after", &small).await,
        expect("after", &small)
    );

    // The peer's certificate changes, which drops its tickets. The client
    // still offers one: the early data is refused and sent again, all
    // 300 KiB of it, more than is kept before the handshake settles.
    server
        .cert
        .send_replace(workload(&inter, &root, "eastwest-b"));
    server.close_connections().await;
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(
        call(&client, to, "replayed", &big).await,
        expect("replayed", &big)
    );
    eventually(&metrics, "client", "0rtt_refused", 1).await;
    eventually(&server.metrics, "server", "full", 2).await;

    // This gateway's own certificate changes: it drops its tickets, and
    // the next connection is a full handshake verified under the current trust.
    client_cert.send_replace(workload(&inter, &root, "eastwest-a"));
    server.close_connections().await;
    assert_eq!(
        call(&client, to, "rotated", &small).await,
        expect("rotated", &small)
    );
    assert_eq!(count(&metrics, "client", "full"), 2);
    eventually(&server.metrics, "server", "full", 3).await;
    assert_eq!(count(&metrics, "client", "0rtt_accepted"), 1);
    assert_eq!(count(&server.metrics, "server", "resumed"), 1);
    endpoint.close(0u32.into(), b"test over");
}

/// The check a resumed identity gets before its streams are served is the
/// handshake's own: the current trust, now.
#[tokio::test]
async fn a_restored_identity_is_checked_against_the_current_trust() {
    init();
    let (root, other) = (Ca::root(), Ca::root());
    let inter = root.intermediate("east-west");
    let stranger = other.intermediate("elsewhere");
    let (_tx, rx) = watch::channel(workload(&inter, &root, "eastwest-b"));
    let verifier = TunnelVerifier::new(rx);
    let (trusted, _) = inter.leaf(&format!("{GW}/eastwest-a"));
    let (untrusted, _) = stranger.leaf(&format!("{GW}/eastwest-a"));
    assert!(verifier.recheck_client(&trusted).is_ok());
    assert!(verifier.recheck_client(&untrusted).is_err());
    assert!(verifier.recheck_client(&[]).is_err());
}
