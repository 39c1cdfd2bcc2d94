//! Access logs: one structured line per HTTP request or TCP connection,
//! configured like Envoy's (`access_log` on the HTTP connection manager and
//! on `tcp_proxy`: `envoy.access_loggers.file` / `stdout` / `stderr` with a
//! `json_format` or `text_format_source`), JSON by default.
//!
//! Lines are rendered on the connection's task and handed to one writer
//! task per destination through a bounded queue, so a slow disk never
//! blocks a request; a full queue drops lines and counts them.

pub mod config;
pub mod format;
mod sink;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

pub use format::{Template, DEFAULT_JSON_FORMAT, DEFAULT_TEXT_FORMAT};
pub use sink::SinkHandle;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Stdout,
    Stderr,
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One line of text per entry (a trailing newline is added when missing).
    Text(Template),
    /// One JSON object per line; keys sorted.
    Json(Vec<(String, JsonField)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonField {
    Template(Template),
    /// A literal (number, boolean, null) copied as is, as its JSON text.
    Literal(String),
    Object(Vec<(String, JsonField)>),
}

impl LogFormat {
    pub fn default_json() -> LogFormat {
        let mut fields: Vec<(String, JsonField)> = DEFAULT_JSON_FORMAT
            .iter()
            .filter_map(|(k, v)| {
                Template::parse(v)
                    .ok()
                    .map(|t| (k.to_string(), JsonField::Template(t)))
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        LogFormat::Json(fields)
    }

    pub fn render(&self, e: &Entry) -> String {
        match self {
            LogFormat::Text(t) => {
                let mut s = t.render_text(e);
                if !s.ends_with('\n') {
                    s.push('\n');
                }
                s
            }
            LogFormat::Json(fields) => {
                let mut s = json_object(fields, e).to_string();
                s.push('\n');
                s
            }
        }
    }
}

fn json_object(fields: &[(String, JsonField)], e: &Entry) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, f) in fields {
        let v = match f {
            JsonField::Template(t) => t.render_json(e),
            JsonField::Literal(l) => serde_json::from_str(l).unwrap_or(serde_json::Value::Null),
            JsonField::Object(o) => json_object(o, e),
        };
        m.insert(k.clone(), v);
    }
    serde_json::Value::Object(m)
}

/// One `access_log` entry of a filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessLogConfig {
    pub destination: Destination,
    pub format: LogFormat,
}

/// Everything a log line may show. HTTP fills the request fields; TCP
/// leaves them `None` (rendered `-` or `null`).
#[derive(Debug, Clone)]
pub struct Entry {
    pub start: SystemTime,
    pub duration_ms: u64,
    pub protocol: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub request_headers: Option<http::HeaderMap>,
    pub response_headers: Option<http::HeaderMap>,
    /// 0 for TCP, as Envoy.
    pub response_code: u16,
    pub response_flags: String,
    pub response_code_details: Option<String>,
    pub connection_termination_details: Option<String>,
    pub upstream_transport_failure_reason: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<String>,
    pub upstream_local_address: Option<String>,
    pub downstream_local_address: Option<String>,
    pub downstream_remote_address: Option<String>,
    pub requested_server_name: Option<String>,
    pub route_name: Option<String>,
    pub trace_id: Option<String>,
    pub hostname: Option<String>,
    /// `source` (outbound) or `destination` (inbound), as the Istio metrics.
    pub reporter: Option<String>,
    pub source_principal: Option<String>,
    pub source_workload: Option<String>,
    pub source_namespace: Option<String>,
    pub destination_principal: Option<String>,
    pub destination_workload: Option<String>,
    pub destination_namespace: Option<String>,
    pub destination_service: Option<String>,
    /// The cluster (`CLUSTER_ID`) of the proxy writing the line.
    pub cluster: Option<String>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            start: SystemTime::UNIX_EPOCH,
            duration_ms: 0,
            protocol: None,
            method: None,
            path: None,
            authority: None,
            scheme: None,
            request_headers: None,
            response_headers: None,
            response_code: 0,
            response_flags: String::new(),
            response_code_details: None,
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 0,
            bytes_sent: 0,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            route_name: None,
            trace_id: None,
            hostname: None,
            reporter: None,
            source_principal: None,
            source_workload: None,
            source_namespace: None,
            destination_principal: None,
            destination_workload: None,
            destination_namespace: None,
            destination_service: None,
            cluster: None,
        }
    }
}

impl Entry {
    /// Fills the workload fields Istio's metrics carry, from who this proxy
    /// is and who the peers are (SPIFFE `ns/NS/sa/SA`; the upstream cluster
    /// `outbound|PORT|SUBSET|HOST`).
    pub fn with_peers(mut self, local: &crate::trace::LocalPeer, reporter: &str) -> Entry {
        self.reporter = Some(reporter.to_string());
        self.cluster = Some(local.cluster.clone()).filter(|c| !c.is_empty());
        self.hostname = Some(local.workload.clone()).filter(|c| !c.is_empty());
        let service_of_cluster = self.upstream_cluster.as_deref().and_then(|c| {
            let mut p = c.split('|');
            match (p.next(), p.next(), p.next(), p.next()) {
                (Some("outbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => {
                    Some(host.to_string())
                }
                _ => None,
            }
        });
        let ns_of = |p: &Option<String>| {
            p.as_deref()
                .and_then(|p| p.split("/ns/").nth(1))
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        };
        if reporter == "destination" {
            self.destination_workload = Some(local.workload.clone());
            self.destination_namespace = Some(local.namespace.clone());
            self.destination_service = Some(format!(
                "{}.{}.svc.cluster.local",
                local.canonical_service, local.namespace
            ));
            self.source_namespace = ns_of(&self.source_principal);
        } else {
            self.source_workload = Some(local.workload.clone()).filter(|w| !w.is_empty());
            self.source_namespace = Some(local.namespace.clone()).filter(|w| !w.is_empty());
            self.destination_service = service_of_cluster;
            self.destination_namespace = ns_of(&self.destination_principal).or_else(|| {
                self.destination_service
                    .as_deref()
                    .and_then(|h| h.split('.').nth(1))
                    .map(str::to_string)
            });
        }
        self
    }
}

/// One configured access log, ready to write.
#[derive(Debug, Clone)]
pub struct Logger {
    format: Arc<LogFormat>,
    sink: SinkHandle,
}

impl Logger {
    pub fn log(&self, e: &Entry) {
        self.sink.write(self.format.render(e));
    }
}

/// The writers, one per destination, shared by every listener.
#[derive(Debug, Default)]
pub struct Sinks {
    open: Mutex<HashMap<Destination, SinkHandle>>,
}

impl Sinks {
    /// Loggers for a filter's `access_log` list. Called once per connection.
    pub fn loggers(&self, cfgs: &[AccessLogConfig]) -> Arc<[Logger]> {
        if cfgs.is_empty() {
            return Arc::from(Vec::new());
        }
        let mut open = match self.open.lock() {
            Ok(m) => m,
            // Inserting one handle cannot leave the map inconsistent.
            Err(p) => p.into_inner(),
        };
        let mut out = Vec::with_capacity(cfgs.len());
        for c in cfgs {
            let handle = match open.get(&c.destination) {
                Some(h) if !h.is_closed() => h.clone(),
                _ => match SinkHandle::start(c.destination.clone()) {
                    Some(h) => {
                        open.insert(c.destination.clone(), h.clone());
                        h
                    }
                    None => continue,
                },
            };
            out.push(Logger {
                format: Arc::new(c.format.clone()),
                sink: handle,
            });
        }
        Arc::from(out)
    }
}

/// What the TCP proxy knows about one connection when it ends.
#[derive(Debug, Clone, Default)]
pub struct TcpFacts {
    pub start: Option<SystemTime>,
    pub duration_ms: u64,
    pub downstream: Option<std::net::SocketAddr>,
    pub local: Option<std::net::SocketAddr>,
    pub sni: Option<String>,
    pub downstream_identity: Option<String>,
    pub cluster: Option<String>,
    pub upstream: Option<std::net::SocketAddr>,
    pub upstream_identity: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Why the connection failed or ended abnormally.
    pub error: Option<String>,
    /// Envoy flags such as `UF` (connect failure), `UH`, `NR` (no chain).
    pub flags: String,
    pub reporter: &'static str,
}

/// Writes the line of one TCP connection to every logger.
pub fn log_tcp(loggers: &[Logger], local: &crate::trace::LocalPeer, f: TcpFacts) {
    if loggers.is_empty() {
        return;
    }
    let upstream_identity = f.upstream_identity.filter(|i| i.starts_with("spiffe://"));
    let e = Entry {
        start: f.start.unwrap_or_else(SystemTime::now),
        duration_ms: f.duration_ms,
        protocol: None,
        response_flags: f.flags,
        connection_termination_details: f.error,
        bytes_received: f.bytes_received,
        bytes_sent: f.bytes_sent,
        upstream_host: f.upstream.map(|a| a.to_string()),
        upstream_cluster: f.cluster,
        downstream_local_address: f.local.map(|a| a.to_string()),
        downstream_remote_address: f.downstream.map(|a| a.to_string()),
        requested_server_name: f.sni,
        source_principal: f.downstream_identity,
        destination_principal: upstream_identity,
        ..Entry::default()
    }
    .with_peers(local, f.reporter);
    for l in loggers {
        l.log(&e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_json_line_has_the_metrics_fields() {
        let local = crate::trace::LocalPeer {
            cluster: "us-west".into(),
            namespace: "default".into(),
            workload: "productpage-v1".into(),
            canonical_service: "productpage".into(),
            ..Default::default()
        };
        let e = Entry {
            protocol: Some("HTTP/1.1".into()),
            method: Some("GET".into()),
            path: Some("/".into()),
            response_code: 200,
            upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local".into()),
            destination_principal: Some("spiffe://td/ns/default/sa/bookinfo-reviews".into()),
            ..Entry::default()
        }
        .with_peers(&local, "source");
        let line = LogFormat::default_json().render(&e);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["method"], "GET");
        assert_eq!(v["reporter"], "source");
        assert_eq!(v["source_workload"], "productpage-v1");
        assert_eq!(
            v["destination_service"],
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(v["destination_namespace"], "default");
        assert_eq!(
            v["destination_principal"],
            "spiffe://td/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(v["cluster"], "us-west");
        assert_eq!(v["requested_server_name"], serde_json::Value::Null);
    }
}
