//! The HTTP connection manager's hooks: per connection, resolve the
//! exporter and access loggers once; per request, start the span (and
//! propagate it) when the head arrives, and at the end of the response
//! body finish the span and write the access log lines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ::http::HeaderMap;

use super::{ActiveSpan, AttrValue, Exporter, LocalPeer, SpanKind, Telemetry, TracingConfig};
use crate::accesslog::{Entry, Logger};
use crate::config::HttpConfig;
use crate::http::respond::RequestLog;

/// What one downstream connection resolved once.
#[derive(Debug, Clone)]
pub struct HttpTelemetry {
    telemetry: Arc<Telemetry>,
    tracing: Option<TracingConfig>,
    exporter: Option<Exporter>,
    loggers: Arc<[Logger]>,
    kind: SpanKind,
    local_addr: Option<SocketAddr>,
    sni: Option<String>,
}

/// Span kind by who reports: inbound listeners and ingress gateways serve,
/// sidecar outbound and egress gateways call.
pub fn span_kind(listener: &str, role: &str) -> SpanKind {
    if listener.starts_with("inbound")
        || listener.starts_with("virtualInbound")
        || role == "ingress"
    {
        SpanKind::Server
    } else {
        SpanKind::Client
    }
}

impl HttpTelemetry {
    pub fn for_connection(
        telemetry: &Arc<Telemetry>,
        cfg: &HttpConfig,
        listener: &str,
        local_addr: Option<SocketAddr>,
        sni: Option<String>,
    ) -> Option<HttpTelemetry> {
        if cfg.tracing.is_none() && cfg.access_log.is_empty() {
            return None;
        }
        let exporter = cfg
            .tracing
            .as_ref()
            .and_then(|t| t.collector.as_ref())
            .and_then(|c| telemetry.exporter(c));
        Some(HttpTelemetry {
            telemetry: telemetry.clone(),
            tracing: cfg.tracing.clone(),
            exporter,
            loggers: telemetry.access_logs.loggers(&cfg.access_log),
            kind: span_kind(listener, &telemetry.local.role),
            local_addr,
            sni,
        })
    }

    /// At the request head: starts the span and rewrites the trace headers
    /// the request will carry to the next hop.
    pub fn on_request(&self, headers: &mut HeaderMap, scheme: &str) -> RequestTelemetry {
        let span = self.telemetry.start(
            self.tracing.as_ref(),
            self.exporter.as_ref(),
            headers,
            self.kind,
        );
        RequestTelemetry {
            start: SystemTime::now(),
            span,
            request_headers: (!self.loggers.is_empty()).then(|| headers.clone()),
            response_headers: None,
            loggers: self.loggers.clone(),
            local: self.telemetry.local.clone(),
            local_addr: self.local_addr,
            sni: self.sni.clone(),
            scheme: scheme.to_string(),
        }
    }
}

/// One request's span and log state; travels in the [`RequestLog`].
#[derive(Debug, Clone)]
pub struct RequestTelemetry {
    start: SystemTime,
    span: Option<ActiveSpan>,
    request_headers: Option<HeaderMap>,
    response_headers: Option<HeaderMap>,
    loggers: Arc<[Logger]>,
    local: Arc<LocalPeer>,
    local_addr: Option<SocketAddr>,
    sni: Option<String>,
    scheme: String,
}

impl RequestTelemetry {
    pub fn on_response(&mut self, headers: &HeaderMap) {
        if !self.loggers.is_empty() {
            self.response_headers = Some(headers.clone());
        }
    }

    pub fn trace_id(&self) -> Option<String> {
        self.span.as_ref().map(ActiveSpan::trace_id_hex)
    }

    /// When the response body ended: ends the span and writes the log lines.
    pub fn finish(&self, log: &RequestLog, bytes_sent: u64, duration_ms: f64) {
        let flags = log.flags.to_string();
        let flags = if flags == "-" { String::new() } else { flags };
        if let Some(span) = &self.span {
            let mut path = log.path.split('?').next().unwrap_or("/").to_string();
            if path.len() > span.max_path {
                let mut end = span.max_path;
                while !path.is_char_boundary(end) {
                    end -= 1;
                }
                path.truncate(end);
            }
            let mut attrs: Vec<(&'static str, AttrValue)> = vec![
                ("component", "proxy".into()),
                ("node_id", self.local.node_id.as_str().into()),
                ("http.method", log.method.as_str().into()),
                (
                    "http.url",
                    format!("{}://{}{}", self.scheme, log.authority, path).into(),
                ),
                ("http.protocol", log.protocol.into()),
                ("http.status_code", AttrValue::Int(i64::from(log.status))),
                ("response_flags", flags.as_str().into()),
                ("request_size", AttrValue::Int(log.bytes_received as i64)),
                ("response_size", AttrValue::Int(bytes_sent as i64)),
                (
                    "istio.canonical_service",
                    self.local.canonical_service.as_str().into(),
                ),
                ("istio.namespace", self.local.namespace.as_str().into()),
                ("istio.cluster_id", self.local.cluster.as_str().into()),
                ("isthmus.cluster", self.local.cluster.as_str().into()),
                ("isthmus.reporter", log.reporter.into()),
            ];
            if let Some(c) = &log.cluster {
                attrs.push(("upstream_cluster", c.as_str().into()));
            }
            if let Some(h) = &log.upstream_host {
                attrs.push(("upstream_address", h.to_string().into()));
            }
            if let Some(p) = &log.source_principal {
                attrs.push(("peer.principal", p.as_str().into()));
            }
            if let Some(id) = self
                .request_headers
                .as_ref()
                .and_then(|h| h.get("x-request-id"))
                .and_then(|v| v.to_str().ok())
            {
                attrs.push(("guid:x-request-id", id.into()));
            }
            let error = log.status >= 500 || (!flags.is_empty() && log.upstream_host.is_none());
            span.clone()
                .finish(format!("{}{}", log.authority, path), attrs, error);
        }
        if self.loggers.is_empty() {
            return;
        }
        let details = response_code_details(log, &flags);
        let peer = log.peer.as_deref();
        let (src_principal, dst_principal) = match log.reporter {
            "destination" => (log.source_principal.clone(), None),
            _ => (
                None,
                peer.map(|p| p.principal.clone()).filter(|p| !p.is_empty()),
            ),
        };
        let mut e = Entry {
            start: self.start,
            duration_ms: duration_ms.round() as u64,
            protocol: Some(log.protocol.to_string()),
            method: Some(log.method.to_string()),
            path: Some(log.path.clone()),
            authority: Some(log.authority.clone()).filter(|a| !a.is_empty()),
            scheme: Some(self.scheme.clone()),
            request_headers: self.request_headers.clone(),
            response_headers: self.response_headers.clone(),
            response_code: log.status,
            response_flags: flags,
            response_code_details: Some(details.to_string()),
            bytes_received: log.bytes_received,
            bytes_sent,
            upstream_host: log.upstream_host.map(|a| a.to_string()),
            upstream_cluster: log.cluster.clone(),
            downstream_local_address: self.local_addr.map(|a| a.to_string()),
            downstream_remote_address: log.downstream.map(|a| a.to_string()),
            requested_server_name: self.sni.clone(),
            route_name: log.route.clone(),
            trace_id: self.trace_id(),
            source_principal: src_principal,
            destination_principal: dst_principal,
            ..Entry::default()
        }
        .with_peers(&self.local, log.reporter);
        if let Some(p) = peer {
            let name = Some(p.name.clone()).filter(|n| !n.is_empty());
            let ns = Some(p.namespace.clone()).filter(|n| !n.is_empty());
            if log.reporter == "destination" {
                e.source_workload = name.or(e.source_workload);
                e.source_namespace = ns.or(e.source_namespace);
            } else {
                e.destination_workload = name.or(e.destination_workload);
                e.destination_namespace = ns.or(e.destination_namespace);
            }
        }
        for l in self.loggers.iter() {
            l.log(&e);
        }
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for what this proxy knows.
fn response_code_details(log: &RequestLog, flags: &str) -> &'static str {
    let has = |f: &str| flags.split(',').any(|x| x == f);
    if flags.is_empty() && log.upstream_host.is_some() {
        "via_upstream"
    } else if has("NR") {
        "route_not_found"
    } else if has("NC") {
        "cluster_not_found"
    } else if has("UH") {
        "no_healthy_upstream"
    } else if has("UO") {
        "upstream_overflow"
    } else if has("UF") {
        "upstream_reset_before_response_started{connection_failure}"
    } else if has("UT") {
        "upstream_response_timeout"
    } else if has("UC") || has("UPE") {
        "upstream_reset_before_response_started{remote_reset}"
    } else if has("FI") {
        "fault_filter_abort"
    } else if has("RL") {
        "local_rate_limited"
    } else if has("RBAC") {
        "rbac_access_denied_matched_policy"
    } else if has("DPE") {
        "downstream_protocol_error"
    } else if log.upstream_host.is_some() {
        "via_upstream"
    } else {
        "direct_response"
    }
}
