//! Upstream HTTP connections per cluster: HTTP/1.1 keep-alive (one request
//! at a time per connection, idle connections reused) and HTTP/2
//! multiplexing (one shared connection per host). The lock is held only to
//! take or return a sender, never across an await.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;

use super::Body;
use crate::config::HttpUpstreamOptions;
use crate::proxy::upstream::{Upstream, UpstreamGuard};

/// Whether a request goes out as HTTP/1.1 or HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

#[derive(Debug)]
struct H1 {
    sender: http1::SendRequest<Body>,
    uses: u32,
    last_used: Instant,
}

#[derive(Debug)]
struct H2 {
    sender: http2::SendRequest<Body>,
    uses: u32,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct HostConns {
    h1_idle: Vec<H1>,
    h2: Option<H2>,
}

/// Connections of one cluster, by host.
#[derive(Debug)]
pub struct ClusterPool {
    options: HttpUpstreamOptions,
    hosts: Arc<Mutex<Hosts>>,
    sweeping: AtomicBool,
}

type Hosts = crate::state::FastMap<SocketAddr, HostConns>;

/// A sender ready for one request.
#[derive(Debug)]
pub enum Sender {
    H1(http1::SendRequest<Body>, u32),
    H2(http2::SendRequest<Body>),
}

/// Idle HTTP/1 connections kept per host; more are closed when returned.
/// As many as Envoy's default circuit breaker allows open connections: an
/// HTTP/2 downstream multiplexes hundreds of requests that each need an
/// HTTP/1 upstream connection, and a lower cap closed and reopened one
/// for every few requests (h2load, 640 streams: 7% of requests paid a TCP
/// connect). `idle_timeout` still closes what stays unused.
const MAX_IDLE_PER_HOST: usize = 1024;

impl ClusterPool {
    pub fn new(options: HttpUpstreamOptions) -> Self {
        Self {
            options,
            hosts: Arc::default(),
            sweeping: AtomicBool::new(false),
        }
    }

    pub fn options(&self) -> HttpUpstreamOptions {
        self.options
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        lock(&self.hosts)
    }

    /// Starts (once, from async context) the task that closes connections
    /// idle for longer than `idle_timeout`; it ends with the pool.
    fn start_sweeper(&self) {
        let Some(idle) = self.options.idle_timeout else {
            return;
        };
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(&self.hosts), idle));
        }
    }

    /// A pooled sender to `addr`, if one is usable now.
    pub fn take(&self, addr: SocketAddr, wire: Wire) -> Option<Sender> {
        let mut hosts = self.lock();
        let conns = hosts.get_mut(&addr)?;
        match wire {
            Wire::Http2 => {
                let h2 = conns.h2.as_mut()?;
                if h2.sender.is_closed() || self.exhausted(h2.uses) {
                    conns.h2 = None;
                    return None;
                }
                h2.uses += 1;
                h2.last_used = Instant::now();
                Some(Sender::H2(h2.sender.clone()))
            }
            Wire::Http1 => {
                // Newest first; closed and expired connections met on the
                // way are dropped (the sweeper catches the rest), so a take
                // does not walk every idle connection of a busy host.
                let now = Instant::now();
                let idle = self.options.idle_timeout;
                let mut i = conns.h1_idle.len();
                while i > 0 {
                    i -= 1;
                    let c = &conns.h1_idle[i];
                    if c.sender.is_closed()
                        || idle.is_some_and(|t| now.duration_since(c.last_used) >= t)
                    {
                        conns.h1_idle.swap_remove(i);
                    } else if c.sender.is_ready() {
                        let c = conns.h1_idle.swap_remove(i);
                        return Some(Sender::H1(c.sender, c.uses));
                    }
                }
                None
            }
        }
    }

    fn exhausted(&self, uses: u32) -> bool {
        self.options
            .max_requests_per_connection
            .is_some_and(|m| uses >= m)
    }

    /// Returns an HTTP/1 sender after its request got a response. The
    /// connection becomes ready again once that response is fully read.
    pub fn put_h1(&self, addr: SocketAddr, sender: http1::SendRequest<Body>, uses: u32) {
        if sender.is_closed() || self.exhausted(uses) {
            return;
        }
        self.start_sweeper();
        let mut hosts = self.lock();
        let conns = hosts.entry(addr).or_default();
        if conns.h1_idle.len() < MAX_IDLE_PER_HOST {
            conns.h1_idle.push(H1 {
                sender,
                uses,
                last_used: Instant::now(),
            });
        }
    }

    /// Opens a new connection on an established upstream stream.
    pub async fn handshake(&self, up: Upstream, wire: Wire) -> Result<Sender, hyper::Error> {
        let Upstream {
            io, addr, guard, ..
        } = up;
        let io = TokioIo::new(io);
        match wire {
            Wire::Http1 => {
                // Flat writes, as the server side does (crate::http::server).
                let (sender, conn) = http1::Builder::new().writev(false).handshake(io).await?;
                tokio::spawn(drive(conn.with_upgrades(), guard));
                Ok(Sender::H1(sender, 0))
            }
            Wire::Http2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await?;
                self.start_sweeper();
                self.lock().entry(addr).or_default().h2 = Some(H2 {
                    sender: sender.clone(),
                    uses: 1,
                    last_used: Instant::now(),
                });
                tokio::spawn(drive(conn, guard));
                Ok(Sender::H2(sender))
            }
        }
    }
}

fn lock(hosts: &Mutex<Hosts>) -> std::sync::MutexGuard<'_, Hosts> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (only pushes/pops), so a poisoned lock is still usable.
    hosts.lock().unwrap_or_else(|p| p.into_inner())
}

/// Dropping a pooled sender closes its connection once no request uses it.
async fn sweep(hosts: Weak<Mutex<Hosts>>, idle: Duration) {
    let period = (idle / 2).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(period).await;
        let Some(hosts) = hosts.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut map = lock(&hosts);
        for conns in map.values_mut() {
            conns
                .h1_idle
                .retain(|c| !c.sender.is_closed() && now.duration_since(c.last_used) < idle);
            if conns
                .h2
                .as_ref()
                .is_some_and(|h| h.sender.is_closed() || now.duration_since(h.last_used) >= idle)
            {
                conns.h2 = None;
            }
        }
        map.retain(|_, c| !c.h1_idle.is_empty() || c.h2.is_some());
    }
}

/// Runs a client connection to completion; the guard releases the
/// cluster's connection slot when it ends.
async fn drive<F>(conn: F, guard: UpstreamGuard)
where
    F: std::future::Future<Output = Result<(), hyper::Error>>,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "upstream HTTP connection ended with an error");
    }
    drop(guard);
}
