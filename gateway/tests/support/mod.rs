//! Shared helpers for the gateway integration tests. Everything binds port
//! 0 on loopback; tasks are aborted on drop.
#![allow(dead_code)]

pub mod ads;
pub mod http;
pub mod pki;
pub mod resources;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use isthmus_gateway::{Gateway, GatewayConfig, NodeIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub const WAIT: Duration = Duration::from_secs(10);

/// Port 0 on loopback: every listener of a test gets its own port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Scripts a workload sidecar's inbound side on `ads`: STRICT mTLS on a
/// `virtualInbound` listener accepting `clients`, forwarding to `app`.
pub fn script_inbound_sidecar(
    ads: &ads::ScriptedAds,
    root_pem: &str,
    app: SocketAddr,
    clients: &[&str],
) {
    use resources::*;
    const INBOUND: &str = "inbound|9080||";
    ads.set(SDS, vec![named("ROOTCA", rootca(root_pem))]);
    ads.set(CDS, vec![named(INBOUND, eds_cluster(INBOUND))]);
    ads.set(EDS, vec![named(INBOUND, cla(INBOUND, &[(0, &[app])]))]);
    ads.set(
        LDS,
        vec![named(
            "virtualInbound",
            inbound_listener("virtualInbound", any_port(), INBOUND, clients, false),
        )],
    );
}

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // RUST_LOG=isthmus_gateway=debug shows the gateways' logs in failing tests.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A TCP app that answers `<id>:<request>` after the client half-closes.
pub struct Backend {
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Backend {
    pub async fn start(id: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), id).await
    }

    pub async fn start_on(at: SocketAddr, id: &str) -> Self {
        let sock = TcpListener::bind(at).await.expect("bind backend");
        let addr = sock.local_addr().expect("addr");
        let id = id.to_string();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut s, _)) = sock.accept().await else {
                    return;
                };
                let id = id.clone();
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).await.is_err() {
                        return;
                    }
                    let mut out = format!("{id}:").into_bytes();
                    out.extend_from_slice(&buf);
                    let _ = s.write_all(&out).await;
                    let _ = s.shutdown().await;
                });
                // Reap finished connection tasks as we go.
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, tasks }
    }

    /// Closes the listener and every connection (the backend "dies").
    pub async fn kill(&mut self) {
        self.tasks.abort_all();
        // Wait until the listener and connections are really gone.
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Sends `msg`, half-closes, returns the whole reply.
pub async fn roundtrip(addr: SocketAddr, msg: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply timed out"))??;
    if out.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without reply",
        ));
    }
    Ok(out)
}

/// Retries `roundtrip` until it returns a reply starting with `prefix`.
pub async fn eventually_reply(addr: SocketAddr, msg: &str, prefix: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = match roundtrip(addr, msg).await {
            Ok(r) if r.starts_with(prefix) => return r,
            Ok(r) => r,
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reply starting with {prefix:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP forwarder that records every byte in both directions.
pub struct Tap {
    pub addr: SocketAddr,
    pub to_server: Arc<Mutex<Vec<u8>>>,
    pub to_client: Arc<Mutex<Vec<u8>>>,
    tasks: JoinSet<()>,
}

impl Tap {
    pub async fn start(upstream: SocketAddr) -> Self {
        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind tap");
        let addr = sock.local_addr().expect("addr");
        let to_server = Arc::new(Mutex::new(Vec::new()));
        let to_client = Arc::new(Mutex::new(Vec::new()));
        let (ts, tc) = (to_server.clone(), to_client.clone());
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((down, _)) = sock.accept().await else {
                    return;
                };
                let (ts, tc) = (ts.clone(), tc.clone());
                conns.spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let a = async move {
                        let mut b = [0u8; 4096];
                        loop {
                            let n = match dr.read(&mut b).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            ts.lock().expect("lock").extend_from_slice(&b[..n]);
                            if uw.write_all(&b[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let c = async move {
                        let mut b = [0u8; 4096];
                        loop {
                            let n = match ur.read(&mut b).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            tc.lock().expect("lock").extend_from_slice(&b[..n]);
                            if dw.write_all(&b[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = dw.shutdown().await;
                    };
                    tokio::join!(a, c);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            to_server,
            to_client,
            tasks,
        }
    }
}

pub fn node(id: &str, role: &str) -> NodeIdentity {
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "CLUSTER_ID".into(),
        serde_json::Value::String("test".into()),
    );
    metadata.insert(
        "ISTHMUS_ROLE".into(),
        serde_json::Value::String(role.into()),
    );
    NodeIdentity {
        id: id.into(),
        cluster: "test".into(),
        metadata,
        locality: Default::default(),
    }
}

/// Starts a gateway against `ads` with an optional workload certificate.
pub async fn gateway(
    ads: &ads::ScriptedAds,
    role: &str,
    cert: Option<isthmus_gateway::CertReceiver>,
) -> Gateway {
    gateway_with_drain(ads, role, cert, Duration::from_secs(5)).await
}

pub async fn gateway_with_drain(
    ads: &ads::ScriptedAds,
    role: &str,
    cert: Option<isthmus_gateway::CertReceiver>,
    drain_time: Duration,
) -> Gateway {
    init();
    let mut cfg = GatewayConfig::new(
        ads.url(),
        node(
            &format!("{role}~127.0.0.1~x.default~default.svc.cluster.local"),
            role,
        ),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.cert = cert;
    cfg.drain_time = drain_time;
    Gateway::start(cfg).await.expect("gateway start")
}

/// GET on the admin server; returns (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Value of the first metric line starting with `prefix` (labels included).
pub fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
