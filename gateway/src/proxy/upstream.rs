//! Connecting to a cluster: circuit breaking, host choice, TCP connect with
//! the cluster's timeout, optional TLS origination, outlier bookkeeping and
//! retries on other hosts.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::BoxIo;
use crate::lb::Host;
use crate::metrics::Metrics;
use crate::outlier::Outcome;
use crate::state::{ClusterCounters, ClusterRuntime};
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cluster {0:?} is not configured (check the tcp_proxy cluster name and CDS)")]
    UnknownCluster(String),
    #[error("cluster {0:?} has no endpoints (EDS not received, or every endpoint removed)")]
    NoHost(String),
    #[error("cluster {cluster:?} is at max_connections ({limit}); connection refused by the circuit breaker")]
    Overflow { cluster: String, limit: u32 },
    #[error("cluster {cluster:?} is at max_pending_requests ({limit}); connection refused by the circuit breaker")]
    PendingOverflow { cluster: String, limit: u32 },
    #[error("cluster {cluster:?}: TLS is not ready: {reason}")]
    TlsNotReady { cluster: String, reason: String },
    #[error("cluster {cluster:?}: {attempts} connect attempt(s) failed; last to {addr}: {reason}")]
    ConnectFailed {
        cluster: String,
        attempts: u32,
        addr: SocketAddr,
        reason: String,
    },
}

/// Holds one slot of a cluster's connection budget and the host's
/// active-request count; released on drop.
#[derive(Debug)]
pub struct UpstreamGuard {
    _slot: Slot,
    host: Host,
    cluster: String,
    metrics: Arc<Metrics>,
}

/// One reserved unit of `max_connections`.
#[derive(Debug)]
struct Slot(Arc<ClusterCounters>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        self.host.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .upstream_cx_active
            .with_label_values(&[&self.cluster])
            .dec();
    }
}

struct PendingGuard<'a>(&'a ClusterCounters);
impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An established upstream connection.
pub struct Upstream {
    pub io: BoxIo,
    pub addr: SocketAddr,
    /// The server's SPIFFE identity when TLS was originated.
    pub peer_identity: Option<String>,
    pub guard: UpstreamGuard,
}

/// Connects to `cluster`, trying up to `attempts` distinct hosts.
pub async fn connect(
    cluster: &ClusterRuntime,
    hash: Option<u64>,
    attempts: u32,
    metrics: &Arc<Metrics>,
) -> Result<Upstream, UpstreamError> {
    connect_excluding(cluster, hash, attempts, metrics, &[]).await
}

/// As [`connect`], avoiding `exclude` (hosts an HTTP retry already tried)
/// while any other host is usable.
pub async fn connect_excluding(
    cluster: &ClusterRuntime,
    hash: Option<u64>,
    attempts: u32,
    metrics: &Arc<Metrics>,
    exclude: &[SocketAddr],
) -> Result<Upstream, UpstreamError> {
    let name = cluster.config.name.as_str();
    let (slot, _pending, tls_config) = admit(cluster, metrics)?;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last: Option<(SocketAddr, String)> = None;
    for _ in 0..attempts.max(1) {
        let avoid: Vec<SocketAddr> = tried.iter().chain(exclude).copied().collect();
        let Some(host) = cluster
            .lb
            .pick(hash, &avoid)
            .or_else(|| cluster.lb.pick(hash, &tried))
        else {
            break;
        };
        tried.push(host.addr);
        match attempt(cluster, &host, tls_config.as_ref(), None).await {
            Ok((io, peer_identity)) => {
                record(cluster, &host, Outcome::Success, metrics);
                return Ok(established(name, &host, io, peer_identity, slot, metrics));
            }
            Err(reason) => {
                tracing::debug!(cluster = name, host = %host.addr, %reason, "upstream connect attempt failed");
                connect_failed(cluster, &host, metrics);
                last = Some((host.addr, reason));
            }
        }
    }
    match last {
        Some((addr, reason)) => Err(UpstreamError::ConnectFailed {
            cluster: name.to_string(),
            attempts: tried.len() as u32,
            addr,
            reason,
        }),
        None => {
            metrics
                .upstream_cx_none_healthy
                .with_label_values(&[name])
                .inc();
            Err(UpstreamError::NoHost(name.to_string()))
        }
    }
}

/// A connection is up: count it and tie the host's and cluster's counters
/// to its lifetime.
fn established(
    name: &str,
    host: &Host,
    io: BoxIo,
    peer_identity: Option<String>,
    slot: Slot,
    metrics: &Arc<Metrics>,
) -> Upstream {
    host.stats.active.fetch_add(1, Ordering::Relaxed);
    metrics.upstream_cx_total.with_label_values(&[name]).inc();
    metrics.upstream_cx_active.with_label_values(&[name]).inc();
    Upstream {
        io,
        addr: host.addr,
        peer_identity,
        guard: UpstreamGuard {
            _slot: slot,
            host: host.clone(),
            cluster: name.to_string(),
            metrics: metrics.clone(),
        },
    }
}

/// A connect attempt failed: count it and feed outlier detection.
fn connect_failed(cluster: &ClusterRuntime, host: &Host, metrics: &Metrics) {
    metrics
        .upstream_cx_connect_fail
        .with_label_values(&[cluster.config.name.as_str()])
        .inc();
    record(cluster, host, Outcome::LocalOriginFailure, metrics);
}

/// Circuit breaking and TLS readiness, checked before any connect. Returns
/// the reserved connection slot, the pending-connect guard and the TLS
/// configuration to use.
fn admit<'a>(
    cluster: &'a ClusterRuntime,
    metrics: &Metrics,
) -> Result<(Slot, PendingGuard<'a>, Option<Arc<rustls::ClientConfig>>), UpstreamError> {
    let name = cluster.config.name.as_str();
    let limits = cluster.config.circuit_breakers;
    let counters = &cluster.counters;
    // Reserve before connecting so concurrent connects cannot overshoot.
    let slot = Slot(counters.clone());
    if counters.active.fetch_add(1, Ordering::AcqRel) >= u64::from(limits.max_connections) {
        drop(slot);
        metrics
            .upstream_cx_overflow
            .with_label_values(&[name])
            .inc();
        return Err(UpstreamError::Overflow {
            cluster: name.to_string(),
            limit: limits.max_connections,
        });
    }
    if counters.pending.fetch_add(1, Ordering::AcqRel) >= u64::from(limits.max_pending_requests) {
        counters.pending.fetch_sub(1, Ordering::AcqRel);
        metrics
            .upstream_cx_pending_overflow
            .with_label_values(&[name])
            .inc();
        return Err(UpstreamError::PendingOverflow {
            cluster: name.to_string(),
            limit: limits.max_pending_requests,
        });
    }
    let pending = PendingGuard(counters);
    let tls_config = match &cluster.tls {
        None => None,
        Some(Ok(c)) => Some(c.clone()),
        Some(Err(reason)) => {
            return Err(UpstreamError::TlsNotReady {
                cluster: name.to_string(),
                reason: reason.clone(),
            })
        }
    };
    Ok((slot, pending, tls_config))
}

/// Connects to one chosen host (HTTP: the host is chosen per request, before
/// the pool is consulted), with the same circuit breaking as [`connect`].
pub async fn connect_host(
    cluster: &ClusterRuntime,
    host: &Host,
    metrics: &Arc<Metrics>,
) -> Result<Upstream, UpstreamError> {
    connect_host_with_alpn(cluster, host, metrics, None).await
}

/// [`connect_host`], offering `alpn` instead of the cluster's ALPN on a TLS
/// connection (the HTTP path over mesh mTLS, `crate::http::mesh_alpn`).
pub async fn connect_host_with_alpn(
    cluster: &ClusterRuntime,
    host: &Host,
    metrics: &Arc<Metrics>,
    alpn: Option<Vec<Vec<u8>>>,
) -> Result<Upstream, UpstreamError> {
    let name = cluster.config.name.as_str();
    let (slot, _pending, tls_config) = admit(cluster, metrics)?;
    match attempt(cluster, host, tls_config.as_ref(), alpn).await {
        Ok((io, peer_identity)) => Ok(established(name, host, io, peer_identity, slot, metrics)),
        Err(reason) => {
            connect_failed(cluster, host, metrics);
            Err(UpstreamError::ConnectFailed {
                cluster: name.to_string(),
                attempts: 1,
                addr: host.addr,
                reason,
            })
        }
    }
}

pub(crate) fn record(cluster: &ClusterRuntime, host: &Host, outcome: Outcome, metrics: &Metrics) {
    if let Some(cfg) = &cluster.config.outlier {
        if host
            .stats
            .outlier
            .record(cfg, outcome, || cluster.lb.ejected_fraction())
        {
            metrics
                .outlier_ejections_total
                .with_label_values(&[&cluster.config.name])
                .inc();
            tracing::warn!(
                cluster = %cluster.config.name,
                host = %host.addr,
                ejections = host.stats.outlier.ejection_count(),
                "outlier detection ejected host"
            );
        }
        for addr in crate::outlier::success_rate::evaluate(&cluster.lb, cfg) {
            metrics
                .outlier_ejections_total
                .with_label_values(&[&cluster.config.name])
                .inc();
            tracing::warn!(
                cluster = %cluster.config.name,
                host = %addr,
                "outlier detection (success rate) ejected host"
            );
        }
    }
}

async fn attempt(
    cluster: &ClusterRuntime,
    host: &Host,
    tls_config: Option<&Arc<rustls::ClientConfig>>,
    alpn: Option<Vec<Vec<u8>>>,
) -> Result<(BoxIo, Option<String>), String> {
    let deadline = tokio::time::Instant::now() + cluster.config.connect_timeout;
    let connect = async {
        match cluster.connect_order(host.addr) {
            // A dual-stack DNS host: race its addresses (RFC 8305).
            Some(order) => {
                crate::resolve::happy::connect(order, crate::resolve::happy::ATTEMPT_DELAY).await
            }
            None => TcpStream::connect(host.addr).await,
        }
    };
    let tcp = tokio::time::timeout_at(deadline, connect)
        .await
        .map_err(|_| {
            format!(
                "connect timed out after {:?}",
                cluster.config.connect_timeout
            )
        })?
        .map_err(|e| e.to_string())?;
    super::socket::tune(&tcp);
    if let Some(k) = &cluster.config.tcp_keepalive {
        if let Err(e) = set_keepalive(&tcp, k) {
            // Not fatal: the connection works, only dead peers are found later.
            tracing::debug!(cluster = %cluster.config.name, error = %e, "cannot set TCP keepalive");
        }
    }
    let Some(config) = tls_config else {
        return Ok((Box::new(tcp), None));
    };
    let sni = cluster.config.tls.as_ref().and_then(|t| t.sni.as_deref());
    let name = tls::server_name(sni, host.addr.ip()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let handshake = match alpn {
        Some(alpn) => connector.with_alpn(alpn).connect(name, tcp),
        None => connector.connect(name, tcp),
    };
    let stream = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let peer = tls::peer_identity(stream.get_ref().1.peer_certificates());
    Ok((Box::new(stream), peer))
}

/// Applies a cluster's keepalive settings to one upstream socket.
pub fn set_keepalive(tcp: &TcpStream, k: &crate::config::TcpKeepalive) -> std::io::Result<()> {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(t);
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(i);
    }
    if let Some(p) = k.probes {
        ka = ka.with_retries(p);
    }
    socket2::SockRef::from(tcp).set_tcp_keepalive(&ka)
}
