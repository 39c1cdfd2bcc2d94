//! Istio's standard metrics (`istio_requests_total`, ...,
//! `istio_tcp_connections_closed_total`) with Istio's names, label names and
//! label semantics, so Istio's Grafana dashboards and alerts work unchanged.
//!
//! Reporter: a sidecar's inbound listeners report as `destination`; every
//! other listener (sidecar outbound, ingress, egress, east-west) as
//! `source`, with the proxy itself as the source workload, as Istio's
//! gateways do. `connection_security_policy` is only known to the
//! destination (`mutual_tls` when the client presented a verified
//! certificate, else `none`); sources report `unknown`, as Istio does.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::workload::{label, Workload};
use super::MetricsError;

/// Labels shared by the HTTP and TCP metrics, in this order.
const COMMON: [&str; 22] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "source_canonical_service",
    "source_canonical_revision",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "destination_canonical_service",
    "destination_canonical_revision",
    "request_protocol",
    "response_flags",
];

fn http_labels() -> Vec<&'static str> {
    let mut v = COMMON.to_vec();
    v.extend([
        "response_code",
        "grpc_response_status",
        "connection_security_policy",
    ]);
    v
}

fn tcp_labels() -> Vec<&'static str> {
    let mut v = COMMON.to_vec();
    v.push("connection_security_policy");
    v
}

/// Istio's default buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's buckets for request and response sizes.
const BYTES_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

#[derive(Debug, Clone)]
pub struct IstioMetrics {
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub request_bytes: HistogramVec,
    pub response_bytes: HistogramVec,
    pub tcp_opened: IntCounterVec,
    pub tcp_closed: IntCounterVec,
    pub tcp_sent: IntCounterVec,
    pub tcp_received: IntCounterVec,
    /// The HTTP metrics' resolved label sets, by request inputs.
    pub(super) http_handles: std::sync::Arc<super::http_handles::HandleCache>,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    name: &'static str,
    c: Result<C, prometheus::Error>,
) -> Result<C, MetricsError> {
    let c = c.map_err(|source| MetricsError::Register { name, source })?;
    r.register(Box::new(c.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(c)
}

impl IstioMetrics {
    pub fn new(r: &Registry) -> Result<Self, MetricsError> {
        let http = http_labels();
        let tcp = tcp_labels();
        let hist = |name: &'static str, help: &str, buckets: &[f64]| {
            reg(
                r,
                name,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    &http,
                ),
            )
        };
        let counter = |name: &'static str, help: &str, labels: &[&str]| {
            reg(r, name, IntCounterVec::new(Opts::new(name, help), labels))
        };
        Ok(IstioMetrics {
            requests_total: counter("istio_requests_total", "HTTP/gRPC requests (Istio standard metric)", &http)?,
            request_duration: hist(
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds, until the last response byte (Istio standard metric)",
                &DURATION_BUCKETS,
            )?,
            request_bytes: hist(
                "istio_request_bytes",
                "Request body sizes in bytes (Istio standard metric; streamed bodies count as 0)",
                &BYTES_BUCKETS,
            )?,
            response_bytes: hist(
                "istio_response_bytes",
                "Response body sizes in bytes (Istio standard metric)",
                &BYTES_BUCKETS,
            )?,
            tcp_opened: counter("istio_tcp_connections_opened_total", "TCP connections opened (Istio standard metric)", &tcp)?,
            tcp_closed: counter("istio_tcp_connections_closed_total", "TCP connections closed (Istio standard metric)", &tcp)?,
            tcp_sent: counter(
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the downstream (response direction) on TCP connections, counted when the connection closes (Istio standard metric)",
                &tcp,
            )?,
            tcp_received: counter(
                "istio_tcp_received_bytes_total",
                "Bytes received from the downstream (request direction) on TCP connections, counted when the connection closes (Istio standard metric)",
                &tcp,
            )?,
            http_handles: std::sync::Arc::default(),
        })
    }
}

/// The service a call was addressed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceName {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceName {
    /// From an Envoy cluster name in Istio's conventions:
    /// `outbound|PORT|SUBSET|HOST` or the SNI form
    /// `outbound_.PORT_.SUBSET_.HOST`; any other cluster name is itself the
    /// service (Istio does the same for PassthroughCluster and friends).
    pub fn from_cluster(cluster: &str) -> ServiceName {
        let host = if let Some(rest) = cluster.strip_prefix("outbound|") {
            rest.splitn(3, '|').nth(2).unwrap_or("")
        } else if cluster.starts_with("outbound_.") {
            cluster.splitn(4, "_.").nth(3).unwrap_or("")
        } else {
            ""
        };
        if host.is_empty() {
            return ServiceName {
                host: cluster.to_string(),
                name: cluster.to_string(),
                namespace: String::new(),
            };
        }
        ServiceName::from_host(host)
    }

    /// `name.namespace.svc.<domain>` → name and namespace; other hosts
    /// (external services) keep the host as the name.
    pub fn from_host(host: &str) -> ServiceName {
        let mut parts = host.split('.');
        let (name, ns, svc) = (parts.next(), parts.next(), parts.next());
        match (name, ns, svc) {
            (Some(n), Some(ns), Some("svc")) => ServiceName {
                host: host.to_string(),
                name: n.to_string(),
                namespace: ns.to_string(),
            },
            _ => ServiceName {
                host: host.to_string(),
                name: host.to_string(),
                namespace: String::new(),
            },
        }
    }

    /// The service a workload serves, as the destination side sees it
    /// (inbound clusters do not name a service): its canonical service in
    /// its namespace.
    pub fn of_workload(w: &Workload) -> ServiceName {
        if w.canonical_service.is_empty() || w.namespace.is_empty() {
            return ServiceName::default();
        }
        ServiceName {
            host: format!("{}.{}.svc.cluster.local", w.canonical_service, w.namespace),
            name: w.canonical_service.clone(),
            namespace: w.namespace.clone(),
        }
    }
}

/// Who reported, and both sides of the call, resolved for labelling.
#[derive(Debug, Clone)]
pub struct CallLabels {
    values: Vec<String>,
    security: &'static str,
}

impl CallLabels {
    pub fn new(
        reporter: &str,
        source: &Workload,
        destination: &Workload,
        service: &ServiceName,
        protocol: &str,
        security: &'static str,
    ) -> CallLabels {
        let v = |s: &str| label(s).to_string();
        let values = vec![
            v(reporter),
            v(&source.name),
            v(&source.namespace),
            v(&source.principal),
            v(&source.app),
            v(&source.version),
            v(&source.cluster),
            v(&source.canonical_service),
            v(&source.canonical_revision),
            v(&destination.name),
            v(&destination.namespace),
            v(&destination.principal),
            v(&destination.app),
            v(&destination.version),
            v(&service.host),
            v(&service.name),
            v(&service.namespace),
            v(&destination.cluster),
            v(&destination.canonical_service),
            v(&destination.canonical_revision),
            protocol.to_string(),
        ];
        CallLabels { values, security }
    }

    /// Label values of an HTTP metric.
    pub fn http<'a>(&'a self, flags: &'a str, code: &'a str, grpc: &'a str) -> Vec<&'a str> {
        let mut v: Vec<&str> = self.values.iter().map(String::as_str).collect();
        v.extend([flags, code, grpc, self.security]);
        v
    }

    /// Label values of a TCP metric.
    pub fn tcp<'a>(&'a self, flags: &'a str) -> Vec<&'a str> {
        let mut v: Vec<&str> = self.values.iter().map(String::as_str).collect();
        v.extend([flags, self.security]);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_from_istio_cluster_names() {
        let s = ServiceName::from_cluster("outbound|9080|v1|reviews.default.svc.cluster.local");
        assert_eq!(
            (s.host.as_str(), s.name.as_str(), s.namespace.as_str()),
            ("reviews.default.svc.cluster.local", "reviews", "default")
        );
        let s = ServiceName::from_cluster("outbound_.9080_._.ratings.shop.svc.cluster.local");
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("ratings", "shop"));
        let s = ServiceName::from_cluster("outbound|443||api.example.com");
        assert_eq!(
            (s.name.as_str(), s.namespace.as_str()),
            ("api.example.com", "")
        );
        let s = ServiceName::from_cluster("PassthroughCluster");
        assert_eq!(s.host, "PassthroughCluster");
    }

    #[test]
    fn label_names_and_values_line_up() {
        let w = Workload::default();
        let l = CallLabels::new("source", &w, &w, &ServiceName::default(), "http", "unknown");
        assert_eq!(l.http("-", "200", "").len(), http_labels().len());
        assert_eq!(l.tcp("-").len(), tcp_labels().len());
        assert_eq!(
            l.tcp("-")[1],
            "unknown",
            "empty values are exported as unknown"
        );
    }
}
