//! UDP and TCP transport around the handler. Our own loops rather than
//! hickory's `Server`, for three reasons: a UDP query is handled inline by
//! the worker that received it (no task per packet, so a flood cannot pile
//! up tasks), TCP connections are capped, and nothing logs per query.
//!
//! A packet shorter than a header, or with the QR bit set (a response), is
//! dropped silently: answering either would let anyone bounce traffic off
//! this server. A query that does not parse gets a header-only FORMERR,
//! never larger than the query. UDP responses never exceed the client's
//! advertised buffer (512 without EDNS, at most [`MAX_UDP_PAYLOAD`]); what
//! does not fit is cut with the TC bit, so the client retries over TCP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_proto::ProtoError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::handler::DnsHandler;
pub use crate::handler::MAX_UDP_PAYLOAD;
use crate::metrics::DnsMetrics;
use crate::view::Serving;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind DNS {proto} on {addr}: {source}; is another DNS server (or another control plane) using the port?")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS server configuration: {0}")]
    Config(String),
}

#[derive(Debug, Clone)]
pub struct DnsServerConfig {
    /// Each address is served over UDP and TCP on the same port (port 0:
    /// one free port for both).
    pub listen: Vec<SocketAddr>,
    /// A TCP connection idle this long is closed.
    pub tcp_idle: Duration,
    /// Connections beyond this are closed at once.
    pub max_tcp_connections: usize,
    /// Tasks receiving on each UDP socket.
    pub udp_workers: usize,
}

impl DnsServerConfig {
    pub fn new(listen: Vec<SocketAddr>) -> DnsServerConfig {
        DnsServerConfig {
            listen,
            tcp_idle: Duration::from_secs(10),
            max_tcp_connections: 512,
            udp_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
        }
    }
}

/// A running server; stops when [`DnsServer::stop`] is called or dropped.
pub struct DnsServer {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    // Port 0: the UDP port the kernel picks may be taken for TCP; retry.
    let tries = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                proto: "UDP",
                addr,
                source,
            })?;
        let port = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "UDP",
            addr,
            source,
        })?;
        match TcpListener::bind(port).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(DnsError::Bind {
                    proto: "TCP",
                    addr: port,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| DnsError::Config(format!("cannot bind {addr}"))))
}

impl DnsServer {
    /// Binds every address (a bind failure fails the start) and serves.
    pub async fn start(
        cfg: &DnsServerConfig,
        serving: watch::Receiver<Arc<Serving>>,
        metrics: DnsMetrics,
    ) -> Result<DnsServer, DnsError> {
        if cfg.listen.is_empty() {
            return Err(DnsError::Config("no listen address".into()));
        }
        let mut bound = Vec::new();
        for addr in &cfg.listen {
            bound.push(bind_pair(*addr).await?);
        }
        let handler = Arc::new(DnsHandler::new(serving, metrics));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        let tcp_slots = Arc::new(Semaphore::new(cfg.max_tcp_connections.max(1)));
        for (udp, tcp) in bound {
            let local = udp.local_addr().map_err(|source| DnsError::Bind {
                proto: "UDP",
                addr: cfg.listen[0],
                source,
            })?;
            addrs.push(local);
            let udp = Arc::new(udp);
            for _ in 0..cfg.udp_workers.max(1) {
                tasks.spawn(udp_worker(udp.clone(), handler.clone(), stop_rx.clone()));
            }
            tasks.spawn(tcp_acceptor(
                tcp,
                handler.clone(),
                tcp_slots.clone(),
                cfg.tcp_idle,
                stop_rx.clone(),
            ));
            info!(addr = %local, "DNS server listening (UDP and TCP)");
        }
        Ok(DnsServer { addrs, stop, tasks })
    }

    /// Where the server listens, UDP and TCP alike.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The response as the handler produced it, encoded for the transport.
/// The handler runs to completion before the transport reads the slot, so
/// the lock is never contended; it exists because hickory's response
/// handler trait needs `Clone + Sync`.
#[derive(Clone)]
struct Responder {
    protocol: Protocol,
    slot: Arc<Mutex<Option<Vec<u8>>>>,
    metrics: DnsMetrics,
}

impl Responder {
    fn new(protocol: Protocol, metrics: DnsMetrics) -> Responder {
        Responder {
            protocol,
            slot: Arc::new(Mutex::new(None)),
            metrics,
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.slot.lock().ok().and_then(|mut s| s.take())
    }
}

fn protocol_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Udp => "udp",
        _ => "tcp",
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Responder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = match self.protocol {
            Protocol::Udp => response
                .edns()
                .map(|e| e.max_payload().clamp(512, MAX_UDP_PAYLOAD))
                .unwrap_or(512),
            _ => u16::MAX,
        };
        let id = response.metadata().id;
        let mut buf = Vec::with_capacity(512);
        let info = {
            let mut enc = BinEncoder::new(&mut buf);
            enc.set_max_size(max);
            response.destructive_emit(&mut enc)
        };
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, "cannot encode a DNS response; sending SERVFAIL");
                buf.clear();
                servfail(id, &mut buf)?
            }
        };
        self.metrics.response(
            &info.response_code.to_string(),
            protocol_label(self.protocol),
            info.truncation,
        );
        if let Ok(mut s) = self.slot.lock() {
            *s = Some(buf);
        }
        Ok(info)
    }
}

fn servfail(id: u16, buf: &mut Vec<u8>) -> Result<ResponseInfo, ProtoError> {
    let mut metadata = Metadata::new(
        id,
        hickory_proto::op::MessageType::Response,
        hickory_proto::op::OpCode::Query,
    );
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut enc = BinEncoder::new(buf);
    hickory_proto::serialize::binary::BinEncodable::emit(&header, &mut enc)?;
    Ok(ResponseInfo::from(header))
}

/// One packet in, at most one response (in the responder's slot) out.
async fn handle_packet(handler: &DnsHandler, bytes: &[u8], src: SocketAddr, responder: Responder) {
    let metrics = handler.metrics();
    let mut decoder = BinDecoder::new(bytes);
    let Ok(header) = Header::read(&mut decoder) else {
        metrics.dropped("short");
        return;
    };
    if header.metadata.message_type == hickory_proto::op::MessageType::Response {
        metrics.dropped("response");
        return;
    }
    match Request::from_bytes(bytes.to_vec(), src, responder.protocol) {
        Ok(request) => {
            handler
                .handle_request::<_, TokioTime>(&request, responder)
                .await;
        }
        Err(e) => {
            debug!(%src, error = %e, "malformed DNS query; answering FORMERR");
            let Ok(queries) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                return;
            };
            let msg = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            let mut r = responder;
            let _ = r.send_response(msg).await;
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Larger than any query we answer; a longer datagram arrives cut and
/// fails to parse (FORMERR).
const UDP_RECV_BUFFER: usize = 4096;

async fn udp_worker(
    socket: Arc<UdpSocket>,
    handler: Arc<DnsHandler>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; UDP_RECV_BUFFER];
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on Linux;
                    // they concern one client, not the socket.
                    debug!(error = %e, "DNS UDP receive error");
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        if src.port() == 0 {
            handler.metrics().dropped("source-port-0");
            continue;
        }
        let responder = Responder::new(Protocol::Udp, handler.metrics().clone());
        handle_packet(&handler, &buf[..n], src, responder.clone()).await;
        if let Some(out) = responder.take() {
            if let Err(e) = socket.send_to(&out, src).await {
                debug!(%src, error = %e, "cannot send DNS UDP response");
            }
        }
    }
}

async fn tcp_acceptor(
    listener: TcpListener,
    handler: Arc<DnsHandler>,
    slots: Arc<Semaphore>,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let (stream, src) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    warn!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            handler.metrics().dropped("tcp-connection-limit");
            continue;
        };
        let handler = handler.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            tcp_connection(stream, src, &handler, idle, stop).await;
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

async fn tcp_connection(
    mut stream: TcpStream,
    src: SocketAddr,
    handler: &DnsHandler,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let msg = tokio::select! {
            r = tokio::time::timeout(idle, read) => match r {
                Ok(Ok(m)) => m,
                // Closed, reset or idle: nothing to answer.
                _ => return,
            },
            _ = stopped(&mut stop) => return,
        };
        let responder = Responder::new(Protocol::Tcp, handler.metrics().clone());
        handle_packet(handler, &msg, src, responder.clone()).await;
        let Some(out) = responder.take() else {
            // Nothing we would answer (a response, a runt): close, as a
            // well-behaved client never sends one.
            return;
        };
        let Ok(len) = u16::try_from(out.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&out);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}
