//! The traffic driver: HTTP/1.1 GETs at a fixed rate (open loop), one TCP
//! connection per request (`Connection: close`) so L4 load balancing and
//! failover show on every request. Every request's outcome, with where it
//! landed (the echo app's cluster and version), goes to the caller over a
//! channel; the caller owns the record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::echo::Answer;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where requests go: a sidecar's outbound listener or a gateway.
    pub target: SocketAddr,
    pub host: String,
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    pub timeout: Duration,
    /// More requests than this in flight are not started (and counted as
    /// failures of kind `Overload`), so a stalled target cannot pile up
    /// thousands of tasks.
    pub max_in_flight: usize,
}

impl LoadConfig {
    pub fn new(target: SocketAddr, host: &str, rate: f64) -> Self {
        LoadConfig {
            target,
            host: host.to_string(),
            path: "/".to_string(),
            rate,
            timeout: Duration::from_secs(3),
            max_in_flight: 256,
        }
    }
}

/// Where a successful request landed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Landing {
    pub cluster: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The target itself refused or timed out the TCP connect.
    Connect(String),
    /// The connection broke before a full answer (reset, EOF, protocol error).
    Broken(String),
    /// No answer within the timeout.
    Timeout,
    /// An answer, but not 2xx.
    Status(u16),
    /// A 2xx whose body is not an echo answer.
    Body(String),
    /// Not started: too many requests already in flight.
    Overload,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Broken(e) => write!(f, "broken: {e}"),
            Failure::Timeout => write!(f, "timeout"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::Body(e) => write!(f, "body: {e}"),
            Failure::Overload => write!(f, "not started: too many in flight"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub start: Instant,
    pub end: Instant,
    pub result: Result<Landing, Failure>,
}

impl Outcome {
    pub fn latency(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// A running load. Dropping it stops new requests.
pub struct Load {
    stop: watch::Sender<bool>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    driver: JoinHandle<()>,
}

impl Load {
    pub fn start(cfg: LoadConfig) -> Load {
        let (stop, stop_rx) = watch::channel(false);
        let (tx, outcomes) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(cfg, stop_rx, tx));
        Load {
            stop,
            outcomes,
            driver,
        }
    }

    /// Outcomes finished since the last call.
    pub fn drain(&mut self) -> Vec<Outcome> {
        let mut v = Vec::new();
        while let Ok(o) = self.outcomes.try_recv() {
            v.push(o);
        }
        v
    }

    /// Stops starting requests, waits for those in flight, returns the rest.
    pub async fn finish(mut self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        let mut v = Vec::new();
        // The channel closes once the driver and every request task are done.
        while let Some(o) = self.outcomes.recv().await {
            v.push(o);
        }
        let _ = (&mut self.driver).await;
        v
    }

    /// Runs until `n` requests completed (or `limit` passed), stops, and
    /// returns the first `n` outcomes (fewer if the limit came first).
    pub async fn first(mut self, n: usize, limit: std::time::Duration) -> Vec<Outcome> {
        let mut v = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while v.len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            v.extend(self.drain());
        }
        v.extend(self.finish().await);
        v.truncate(n);
        v
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn drive(
    cfg: LoadConfig,
    mut stop: watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<Outcome>,
) {
    let period = Duration::from_secs_f64(1.0 / cfg.rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    // Late ticks are sent as soon as possible so the offered rate holds.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight));
    let cfg = Arc::new(cfg);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let start = Instant::now();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = tx.send(Outcome {
                start,
                end: start,
                result: Err(Failure::Overload),
            });
            continue;
        };
        let (tx, cfg) = (tx.clone(), cfg.clone());
        tokio::spawn(async move {
            let result = match tokio::time::timeout(cfg.timeout, request(&cfg)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout),
            };
            let _ = tx.send(Outcome {
                start,
                end: Instant::now(),
                result,
            });
            drop(permit);
        });
    }
}

/// One request on a fresh connection; where it landed last (through any
/// chain of calls, see [`Answer::last`]).
pub async fn request(cfg: &LoadConfig) -> Result<Landing, Failure> {
    let answer = request_answer(cfg).await?;
    let last = answer.last();
    Ok(Landing {
        cluster: last.cluster.clone(),
        version: last.version.clone(),
    })
}

/// One request on a fresh connection, with the whole echo answer.
pub async fn request_answer(cfg: &LoadConfig) -> Result<Answer, Failure> {
    let stream = TcpStream::connect(cfg.target)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Broken(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(cfg.path.as_str())
        .header(http::header::HOST, cfg.host.as_str())
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Broken(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::Broken(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::Broken(e.to_string()))?
        .to_bytes();
    if !(200..300).contains(&status) {
        return Err(Failure::Status(status));
    }
    serde_json::from_slice(&body).map_err(|e| Failure::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo::{serve, Identity};

    #[tokio::test]
    async fn load_records_landings_and_connect_failures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Identity {
            service: "reviews".into(),
            cluster: "c1".into(),
            zone: "z".into(),
            version: "v9".into(),
        };
        let server = tokio::spawn(serve(listener, me));
        let load = Load::start(LoadConfig::new(addr, "reviews", 200.0));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = load.finish().await;
        assert!(
            got.len() >= 10,
            "only {} requests in 200ms at 200/s",
            got.len()
        );
        assert!(got.iter().all(|o| o.result
            == Ok(Landing {
                cluster: "c1".into(),
                version: "v9".into()
            })));
        server.abort();
        let _ = server.await;

        // Nothing listens any more: every request is a connect failure.
        let mut cfg = LoadConfig::new(addr, "reviews", 100.0);
        cfg.timeout = Duration::from_secs(1);
        let load = Load::start(cfg);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = load.finish().await;
        assert!(!got.is_empty());
        assert!(
            got.iter()
                .all(|o| matches!(o.result, Err(Failure::Connect(_)))),
            "{got:?}"
        );
    }
}
