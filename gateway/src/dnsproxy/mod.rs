//! The sidecar's DNS proxy: answers the names of the control plane's name
//! table (services of every cluster, including those that exist only in
//! other clusters, and ServiceEntry hosts) and forwards every other query,
//! unchanged, to the upstream resolver. No local stub Service is needed for
//! a remote-only service.
//!
//! UDP and TCP on one address (Istio uses 127.0.0.1:15053). Messages are
//! parsed and built with hickory's protocol crate; forwarded queries are
//! relayed byte for byte, so the upstream's answer (and its TTLs, DNSSEC
//! records, EDNS options) reaches the client as sent.

pub mod nametable;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use nametable::{NameIndex, NameInfo, NameTable, NAME_TABLE_RESOURCE, NAME_TABLE_TYPE};

/// TTL of answers from the name table (Istio's DNS proxy uses 30 s).
pub const ANSWER_TTL: u32 = 30;
/// How long one upstream may take to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// A TCP client idle this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DnsProxyError {
    #[error("cannot bind the DNS proxy ({proto}) on {addr}: {source}; is another resolver using the port?")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the DNS proxy needs an upstream resolver: {0}")]
    NoUpstream(String),
}

/// Where the proxy listens and forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsProxyConfig {
    pub listen: SocketAddr,
    /// Upstream resolvers for names outside the table; empty: the
    /// nameservers of /etc/resolv.conf.
    pub upstream: Vec<SocketAddr>,
}

/// A running DNS proxy.
#[derive(Debug)]
pub struct DnsProxy {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl DnsProxy {
    /// Binds UDP and TCP on `cfg.listen` (port 0: one free port for both)
    /// and serves `names` until [`DnsProxy::stop`] (or drop).
    pub async fn start(
        cfg: &DnsProxyConfig,
        names: watch::Receiver<Arc<NameIndex>>,
    ) -> Result<DnsProxy, DnsProxyError> {
        let upstream = if cfg.upstream.is_empty() {
            system_nameservers()?
        } else {
            cfg.upstream.clone()
        };
        let (udp, tcp) = bind_pair(cfg.listen).await?;
        let addr = udp.local_addr().map_err(|source| DnsProxyError::Bind {
            proto: "UDP",
            addr: cfg.listen,
            source,
        })?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared { names, upstream });
        tokio::spawn(serve_udp(Arc::new(udp), shared.clone(), stop.clone()));
        tokio::spawn(serve_tcp(tcp, shared, stop.clone()));
        tracing::info!(%addr, "DNS proxy listening (UDP and TCP)");
        Ok(DnsProxy { addr, stop })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared {
    names: watch::Receiver<Arc<NameIndex>>,
    upstream: Vec<SocketAddr>,
}

fn system_nameservers() -> Result<Vec<SocketAddr>, DnsProxyError> {
    let (cfg, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| DnsProxyError::NoUpstream(format!("/etc/resolv.conf: {e}")))?;
    let v: Vec<SocketAddr> = cfg
        .name_servers()
        .iter()
        .map(|n| SocketAddr::new(n.ip, 53))
        .collect();
    if v.is_empty() {
        return Err(DnsProxyError::NoUpstream(
            "/etc/resolv.conf lists no nameserver; pass --dns-upstream".into(),
        ));
    }
    Ok(v)
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsProxyError> {
    // Port 0: the port the kernel picks for UDP may be taken for TCP; retry.
    let tries = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsProxyError::Bind {
                proto: "UDP",
                addr,
                source,
            })?;
        let port = udp.local_addr().map_err(|source| DnsProxyError::Bind {
            proto: "UDP",
            addr,
            source,
        })?;
        match TcpListener::bind(port).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(DnsProxyError::Bind {
                    proto: "TCP",
                    addr: port,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| DnsProxyError::Bind {
        proto: "TCP",
        addr,
        source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free port pair"),
    }))
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>, stop: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS proxy: UDP receive failed");
                    continue;
                }
            },
        };
        let query = buf[..n].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        // Forwarding waits on the upstream: one task per query, so a slow
        // upstream does not hold up table answers.
        tokio::spawn(async move {
            if let Some(resp) = handle(&shared, &query, false).await {
                let _ = sock.send_to(&resp, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS proxy: TCP accept failed");
                    continue;
                }
            },
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve_tcp_conn(stream, &shared) => {}
            }
        });
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let mut query = vec![0u8; usize::from(len?)];
        stream.read_exact(&mut query).await?;
        let Some(resp) = handle(shared, &query, true).await else {
            return Ok(());
        };
        let Ok(len) = u16::try_from(resp.len()) else {
            return Ok(());
        };
        stream.write_u16(len).await?;
        stream.write_all(&resp).await?;
    }
}

/// The response to one query, or `None` to drop it (not a query at all).
async fn handle(shared: &Shared, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            // A header we can read gets FORMERR; anything shorter is dropped.
            if query.len() < 12 {
                return None;
            }
            let id = u16::from_be_bytes([query[0], query[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    if let (OpCode::Query, [q]) = (msg.metadata.op_code, msg.queries.as_slice()) {
        let table = shared.names.borrow().clone();
        if let Some(ips) = table.lookup(&q.name().to_ascii()) {
            return answer(&msg, ips).to_vec().ok();
        }
    }
    match forward(&shared.upstream, query, tcp).await {
        Some(r) => Some(r),
        None => Message::error_msg(
            msg.metadata.id,
            msg.metadata.op_code,
            ResponseCode::ServFail,
        )
        .to_vec()
        .ok(),
    }
}

/// An authoritative answer from the table: A or AAAA records of the
/// matching family, NODATA for other types.
fn answer(query: &Message, ips: &[IpAddr]) -> Message {
    let mut resp = Message::response(query.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.queries = query.queries.clone();
    if let Some(q) = query.queries.first() {
        for ip in ips {
            let rdata = match (q.query_type(), ip) {
                (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            resp.answers
                .push(Record::from_rdata(q.name().clone(), ANSWER_TTL, rdata));
        }
    }
    resp
}

/// Relays the query to each upstream in turn; the first answer wins.
async fn forward(upstream: &[SocketAddr], query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    for server in upstream {
        let r = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            if tcp {
                forward_tcp(*server, query).await
            } else {
                forward_udp(*server, query).await
            }
        })
        .await;
        match r {
            Ok(Ok(resp)) => return Some(resp),
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "DNS proxy: upstream failed"),
            Err(_) => tracing::debug!(%server, "DNS proxy: upstream timed out"),
        }
    }
    None
}

async fn forward_udp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Only the answer to this query (same id) is relayed.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    s.write_u16(len).await?;
    s.write_all(query).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}
