//! The load generator: `connections` keep-alive HTTP/1.1 clients over
//! mTLS, each in a closed loop (next request when the previous response
//! body has been read), for a warm-up then a measured window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

use crate::setup::{HOST, SNI};

type Res<T> = Result<T, String>;

/// What every request carries (identical for every configuration).
#[derive(Clone)]
pub struct RequestShape {
    pub path: &'static str,
    pub token: Option<String>,
}

pub async fn connect(
    tls: &Arc<rustls::ClientConfig>,
    at: SocketAddr,
) -> Res<SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(at)
        .await
        .map_err(|e| format!("connect {at}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(SNI).map_err(|e| e.to_string())?;
    let io = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("mTLS handshake with {at}: {e}"))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// One request; the status once the whole body has been read.
pub async fn request(send: &mut SendRequest<Empty<Bytes>>, shape: &RequestShape) -> Res<u16> {
    send.ready().await.map_err(|e| format!("connection: {e}"))?;
    let mut b = http::Request::builder()
        .method("GET")
        .uri(shape.path)
        .header("host", HOST);
    if let Some(t) = &shape.token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// One measured window.
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Sample {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// Nearest-rank percentile in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize).max(1);
        f64::from(self.latencies_us[rank.min(self.latencies_us.len()) - 1]) / 1000.0
    }
}

/// Runs the closed loops against `at`; only responses whose request
/// started after the warm-up count.
pub async fn run(
    tls: &Arc<rustls::ClientConfig>,
    at: SocketAddr,
    shape: &RequestShape,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> Res<Sample> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(tls, at).await?);
    }
    let start = Instant::now();
    let from = start + warmup;
    let end = from + measure;
    let mut tasks = JoinSet::new();
    for mut send in senders {
        let (tls, shape) = (tls.clone(), shape.clone());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ok = matches!(request(&mut send, &shape).await, Ok(200));
                let done = Instant::now();
                if t0 >= from && done <= end {
                    if ok {
                        let us = done.duration_since(t0).as_micros();
                        lat.push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
                if !ok && send.is_closed() {
                    // Keep the concurrency: replace a connection the proxy closed.
                    match connect(&tls, at).await {
                        Ok(s) => send = s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
            (lat, errors)
        });
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (lat, e) = r.map_err(|e| format!("load task: {e}"))?;
        latencies_us.extend(lat);
        errors += e;
    }
    latencies_us.sort_unstable();
    Ok(Sample {
        requests: latencies_us.len() as u64,
        errors,
        seconds: measure.as_secs_f64(),
        latencies_us,
    })
}
