//! Prometheus metrics of the data plane. Names follow Envoy's stats where
//! one exists (`downstream_cx_total`, `upstream_cx_overflow`, ...), with an
//! `isthmus_gateway_` prefix.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Labels of Istio's HTTP metrics. Values are bounded: principals and
/// clusters come from configuration and certificates, not from requests.
pub const ISTIO_HTTP_LABELS: [&str; 6] = [
    "reporter",
    "source_principal",
    "destination_service",
    "destination_cluster",
    "response_code",
    "response_flags",
];

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
    pub bytes_total: IntCounterVec,
    pub tcp_connections_opened: IntCounterVec,
    pub xds_updates_total: IntCounterVec,
    /// `istio_requests_total`.
    pub istio_requests_total: IntCounterVec,
    /// `istio_request_duration_milliseconds`.
    pub istio_request_duration: HistogramVec,
    pub upstream_rq_retry: IntCounterVec,
    pub upstream_rq_overflow: IntCounterVec,
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
            bytes_total: counter(&r, "bytes_total", "Bytes proxied", &["listener", "direction"])?,
            tcp_connections_opened: counter(
                &r,
                "tcp_connections_opened_total",
                "Proxied TCP connections by verified peer identities (Istio's source/destination principal)",
                &["listener", "source_principal", "destination_principal"],
            )?,
            xds_updates_total: counter(&r, "xds_updates_total", "xDS responses by type and result (ack/nack)", &["type", "result"])?,
            istio_requests_total: {
                let c = IntCounterVec::new(
                    Opts::new("istio_requests_total", "HTTP requests (Istio standard metric)"),
                    &ISTIO_HTTP_LABELS,
                )
                .map_err(|source| MetricsError::Register { name: "istio_requests_total", source })?;
                r.register(Box::new(c.clone()))
                    .map_err(|source| MetricsError::Register { name: "istio_requests_total", source })?;
                c
            },
            istio_request_duration: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "istio_request_duration_milliseconds",
                        "HTTP request duration in milliseconds (Istio standard metric)",
                    )
                    .buckets(vec![
                        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                        5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0,
                        3600000.0,
                    ]),
                    &ISTIO_HTTP_LABELS,
                )
                .map_err(|source| MetricsError::Register { name: "istio_request_duration_milliseconds", source })?;
                r.register(Box::new(h.clone()))
                    .map_err(|source| MetricsError::Register { name: "istio_request_duration_milliseconds", source })?;
                h
            },
            upstream_rq_retry: counter(&r, "upstream_rq_retry_total", "HTTP request retries", &["cluster"])?,
            upstream_rq_overflow: counter(&r, "upstream_rq_pending_overflow_http_total", "HTTP requests refused by max_requests / max_pending_requests (response flag UO)", &["cluster"])?,
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
