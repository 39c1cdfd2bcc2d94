//! Prometheus metrics of the data plane. Names follow Envoy's stats where
//! one exists (`downstream_cx_total`, `upstream_cx_overflow`, ...), with an
//! `isthmus_gateway_` prefix; Istio's standard metrics (`istio_*`) are in
//! [`istio`], labelled with this proxy's own workload ([`LocalProxy`], from
//! its node metadata) and the peer's ([`workload`], [`peer`]).

mod health;
mod http_handles;
pub mod istio;
pub mod peer;
mod record;
pub mod workload;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use health::Health;
pub use istio::{CallLabels, IstioMetrics, ServiceName};
pub use record::{HttpCall, LocalProxy};
pub use workload::Workload;

/// Istio's reporter of a listener: a sidecar's inbound listeners report as
/// `destination`, everything else (outbound, gateways) as `source`.
pub fn reporter_of(listener: &str) -> &'static str {
    if listener.starts_with("inbound") || listener.starts_with("virtualInbound") {
        "destination"
    } else {
        "source"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}: {source}")]
    Register {
        name: &'static str,
        source: prometheus::Error,
    },
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// All data-plane metrics. Cheap to share behind an `Arc`; prometheus
/// metrics are internally synchronised.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// This proxy's side of every call (Istio labels).
    local: LocalProxy,
    /// Peer workloads seen, bounded (Istio labels).
    peers: workload::PeerInterner,
    pub downstream_cx_total: IntCounterVec,
    pub downstream_cx_active: IntGaugeVec,
    pub downstream_cx_no_chain: IntCounterVec,
    pub downstream_tls_handshake_error: IntCounterVec,
    pub upstream_cx_total: IntCounterVec,
    pub upstream_cx_active: IntGaugeVec,
    pub upstream_cx_connect_fail: IntCounterVec,
    pub upstream_cx_overflow: IntCounterVec,
    pub upstream_cx_pending_overflow: IntCounterVec,
    pub upstream_cx_none_healthy: IntCounterVec,
    pub outlier_ejections_total: IntCounterVec,
    /// Connections to tunnel clusters by the transport that carried them.
    pub tunnel_connections_total: IntCounterVec,
    /// Tunnel handshakes by side and kind (full, resumed, 0-RTT accepted or refused).
    pub tunnel_handshakes_total: IntCounterVec,
    pub bytes_total: IntCounterVec,
    pub tcp_connections_opened: IntCounterVec,
    pub xds_updates_total: IntCounterVec,
    /// Istio's standard metrics.
    pub istio: IstioMetrics,
    /// xDS connection state, config freshness, certificate expiry.
    pub health: Health,
    pub upstream_rq_retry: IntCounterVec,
    pub upstream_rq_retry_overflow: IntCounterVec,
    pub upstream_rq_overflow: IntCounterVec,
    /// RBAC decisions (crate::rbac): allowed, denied, logged.
    pub rbac_decisions: IntCounterVec,
}

fn counter(
    registry: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(format!("isthmus_gateway_{name}"), help), labels)
        .map_err(|source| MetricsError::Register { name, source })?;
    registry
        .register(Box::new(c.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(c)
}

fn gauge(
    registry: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(format!("isthmus_gateway_{name}"), help), labels)
        .map_err(|source| MetricsError::Register { name, source })?;
    registry
        .register(Box::new(g.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(g)
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let r = Registry::new();
        Ok(Self {
            downstream_cx_total: counter(&r, "downstream_cx_total", "Accepted downstream connections", &["listener"])?,
            downstream_cx_active: gauge(&r, "downstream_cx_active", "Open downstream connections", &["listener"])?,
            downstream_cx_no_chain: counter(&r, "downstream_cx_no_filter_chain_match", "Connections closed because no filter chain matched", &["listener"])?,
            downstream_tls_handshake_error: counter(&r, "downstream_tls_handshake_error_total", "Failed downstream TLS handshakes", &["listener"])?,
            upstream_cx_total: counter(&r, "upstream_cx_total", "Upstream connections established", &["cluster"])?,
            upstream_cx_active: gauge(&r, "upstream_cx_active", "Open upstream connections", &["cluster"])?,
            upstream_cx_connect_fail: counter(&r, "upstream_cx_connect_fail_total", "Failed upstream connection attempts (TCP or TLS)", &["cluster"])?,
            upstream_cx_overflow: counter(&r, "upstream_cx_overflow_total", "Connections refused by the max_connections circuit breaker", &["cluster"])?,
            upstream_cx_pending_overflow: counter(&r, "upstream_rq_pending_overflow_total", "Connections refused by the max_pending_requests circuit breaker", &["cluster"])?,
            upstream_cx_none_healthy: counter(&r, "upstream_cx_none_healthy_total", "Connections refused because the cluster had no host", &["cluster"])?,
            outlier_ejections_total: counter(&r, "outlier_detection_ejections_total", "Hosts ejected by outlier detection", &["cluster"])?,
            tunnel_connections_total: counter(&r, "tunnel_connections_total", "Connections to clusters marked for the QUIC tunnel, by the transport that carried them (quic, or tcp as the fallback)", &["cluster", "transport"])?,
            tunnel_handshakes_total: counter(&r, "tunnel_handshakes_total", "QUIC tunnel handshakes by side (client, server) and kind: full; resumed (server); 0rtt_accepted, 0rtt_refused (client: the peer took, or refused and the streams were sent again)", &["side", "kind"])?,
            bytes_total: counter(&r, "bytes_total", "Bytes proxied", &["listener", "direction"])?,
            tcp_connections_opened: counter(
                &r,
                "tcp_connections_opened_total",
                "Proxied TCP connections by verified peer identities (Istio's source/destination principal)",
                &["listener", "source_principal", "destination_principal"],
            )?,
            xds_updates_total: counter(&r, "xds_updates_total", "xDS responses by type and result (ack/nack)", &["type", "result"])?,
            istio: IstioMetrics::new(&r)?,
            health: Health::new(&r)?,
            upstream_rq_retry: counter(&r, "upstream_rq_retry_total", "HTTP request retries", &["cluster"])?,
            upstream_rq_retry_overflow: counter(&r, "upstream_rq_retry_overflow_total", "HTTP retries not attempted because the cluster's max_retries or retry budget was used up (response flag UO)", &["cluster"])?,
            upstream_rq_overflow: counter(&r, "upstream_rq_pending_overflow_http_total", "HTTP requests refused by max_requests / max_pending_requests (response flag UO)", &["cluster"])?,
            rbac_decisions: counter(&r, "rbac_decisions_total", "RBAC filter decisions by listener, protocol (http/tcp), result (allowed/denied/logged) and the denying filter's stat prefix", &["listener", "protocol", "result", "stat_prefix"])?,
            local: LocalProxy::default(),
            peers: workload::PeerInterner::default(),
            registry: r,
        })
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}
