//! Distributed tracing: context propagation (`context`), the per-connection
//! manager's `tracing` settings (`config`), one span per proxied request,
//! and batched OTLP export off the request path (`export`).
//!
//! A span starts when the request head arrives and ends when the response
//! body ends (with the access log line), so a streaming response is
//! measured whole. The span's context is written into the request before
//! it is forwarded, so the next hop — the application, or the sidecar on
//! the other side of an east-west gateway — continues the same trace.

pub mod config;
pub mod context;
pub mod export;
pub mod http;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ::http::HeaderMap;
use rand::Rng;

pub use config::{Collector, TracingConfig};
pub use context::{Extracted, Incoming, SpanContext, Style};
pub use export::{ExportOptions, Exporter, FinishedSpan, SpanKind};

use crate::NodeIdentity;

/// Who this proxy is, for span attributes and access log fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPeer {
    pub node_id: String,
    /// `CLUSTER_ID`.
    pub cluster: String,
    pub namespace: String,
    /// Workload name (pod name without the IP-derived suffix when unknown).
    pub workload: String,
    /// `service.istio.io/canonical-name`, else the `app` label, else the workload.
    pub canonical_service: String,
    /// `ISTHMUS_ROLE`: sidecar, ingress, egress, east-west.
    pub role: String,
}

impl LocalPeer {
    pub fn from_node(n: &NodeIdentity) -> LocalPeer {
        let s = |k: &str| {
            n.metadata
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let label = |k: &str| {
            n.metadata
                .get("LABELS")
                .and_then(|l| l.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        // Node id: TYPE~IP~POD.NS~NS.svc.cluster.local
        let pod =
            n.id.split('~')
                .nth(2)
                .and_then(|p| p.split('.').next())
                .unwrap_or("")
                .to_string();
        let workload = {
            let w = s("WORKLOAD_NAME");
            if w.is_empty() {
                pod
            } else {
                w
            }
        };
        let canonical_service = label("service.istio.io/canonical-name")
            .or_else(|| label("app"))
            .unwrap_or_else(|| workload.clone());
        LocalPeer {
            node_id: n.id.clone(),
            cluster: if n.cluster.is_empty() {
                s("CLUSTER_ID")
            } else {
                n.cluster.clone()
            },
            namespace: s("NAMESPACE"),
            workload,
            canonical_service,
            role: s("ISTHMUS_ROLE"),
        }
    }
}

/// Process-wide tracing and access-log state shared by every connection:
/// who we are, one exporter per collector, one writer per log file.
#[derive(Debug)]
pub struct Telemetry {
    pub local: Arc<LocalPeer>,
    options: ExportOptions,
    /// Looked up once per connection (not per request); an exporter is a
    /// channel to its own task.
    exporters: Mutex<HashMap<Collector, Exporter>>,
    pub access_logs: crate::accesslog::Sinks,
}

impl Telemetry {
    pub fn new(local: LocalPeer, options: ExportOptions) -> Telemetry {
        Telemetry {
            local: Arc::new(local),
            options,
            exporters: Mutex::new(HashMap::new()),
            access_logs: crate::accesslog::Sinks::default(),
        }
    }

    /// The exporter for a collector, started on first use. Needs a Tokio runtime.
    pub fn exporter(&self, c: &Collector) -> Option<Exporter> {
        let mut map = match self.exporters.lock() {
            Ok(m) => m,
            // A panic while holding the lock cannot leave the map half
            // updated (single insert), so its content is still usable.
            Err(p) => p.into_inner(),
        };
        if let Some(e) = map.get(c) {
            if !e.is_closed() {
                return Some(e.clone());
            }
        }
        let e = Exporter::start(c.clone(), self.local.clone(), self.options.clone())?;
        map.insert(c.clone(), e.clone());
        Some(e)
    }

    /// Decides tracing for one request: extracts the caller's context,
    /// samples, and writes this proxy's span into `headers` for the next
    /// hop. `None` when the connection manager has no `tracing`.
    pub fn start(
        &self,
        cfg: Option<&TracingConfig>,
        exporter: Option<&Exporter>,
        headers: &mut HeaderMap,
        kind: SpanKind,
    ) -> Option<ActiveSpan> {
        let cfg = cfg?;
        let extracted = context::extract(headers);
        if extracted.malformed {
            tracing::debug!("malformed trace context header ignored; starting a new trace");
        }
        let draw = rand::rng().random_range(0..1_000_000u32);
        let span = child_of(&extracted, cfg.sampling_per_million, draw, &mut rand::rng());
        context::inject(headers, &span, context::b3_out(&extracted));
        let service: Arc<str> = if cfg.service_name.is_empty() {
            Arc::from(format!(
                "{}.{}",
                self.local.canonical_service, self.local.namespace
            ))
        } else {
            Arc::from(cfg.service_name.as_str())
        };
        Some(ActiveSpan {
            service,
            max_path: cfg.max_path_tag_length,
            exporter: if span.sampled {
                exporter.cloned()
            } else {
                None
            },
            context: span,
            kind,
            start: SystemTime::now(),
        })
    }
}

/// The span this proxy adds for a request, given what the caller sent.
/// `draw` in `[0, 1_000_000)`: sampled when below `per_million` and the
/// caller made no decision; the caller's decision is always respected.
pub fn child_of(e: &Extracted, per_million: u32, draw: u32, rng: &mut impl Rng) -> SpanContext {
    let mut span_id = [0u8; 8];
    while span_id == [0u8; 8] {
        rng.fill(&mut span_id);
    }
    match &e.context {
        Some(c) => SpanContext {
            trace_id: c.trace_id,
            span_id,
            parent_span_id: Some(c.span_id),
            sampled: c.sampled.unwrap_or(draw < per_million),
            tracestate: c.tracestate.clone(),
        },
        None => {
            let mut trace_id = [0u8; 16];
            while trace_id == [0u8; 16] {
                rng.fill(&mut trace_id);
            }
            SpanContext {
                trace_id,
                span_id,
                parent_span_id: None,
                sampled: e.sampled_only.unwrap_or(draw < per_million),
                tracestate: None,
            }
        }
    }
}

/// A span in flight: ends with the response.
#[derive(Debug, Clone)]
pub struct ActiveSpan {
    pub context: SpanContext,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub service: Arc<str>,
    /// `max_path_tag_length`.
    pub max_path: usize,
    /// Only for sampled spans with a collector.
    exporter: Option<Exporter>,
}

impl ActiveSpan {
    pub fn trace_id_hex(&self) -> String {
        context::hex(&self.context.trace_id)
    }

    /// Ends the span and queues it for export (never blocks; a full queue drops it).
    pub fn finish(self, name: String, attributes: Vec<(&'static str, AttrValue)>, error: bool) {
        let Some(exporter) = self.exporter else {
            return;
        };
        exporter.submit(FinishedSpan {
            context: self.context,
            service: self.service,
            name,
            kind: self.kind,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error,
        });
    }
}

/// A span attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_string())
    }
}

impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}

impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn incoming(sampled: Option<bool>) -> Extracted {
        Extracted {
            context: Some(Incoming {
                trace_id: [9; 16],
                span_id: [8; 8],
                sampled,
                tracestate: None,
                style: Style::W3c,
                b3_64bit: false,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_callers_decision_wins_over_the_percentage() {
        let c = child_of(&incoming(Some(true)), 0, 999_999, &mut rng());
        assert!(c.sampled);
        assert_eq!(c.trace_id, [9; 16]);
        assert_eq!(c.parent_span_id, Some([8; 8]));
        assert_ne!(c.span_id, [8; 8]);
        let c = child_of(&incoming(Some(false)), 1_000_000, 0, &mut rng());
        assert!(!c.sampled);
        // No decision from the caller (B3 without x-b3-sampled): ours.
        assert!(child_of(&incoming(None), 500_000, 499_999, &mut rng()).sampled);
        assert!(!child_of(&incoming(None), 500_000, 500_000, &mut rng()).sampled);
    }

    #[test]
    fn a_new_trace_without_caller() {
        let e = Extracted::default();
        let c = child_of(&e, 0, 0, &mut rng());
        assert!(!c.sampled, "0% samples nothing");
        assert_eq!(c.parent_span_id, None);
        assert_ne!(c.trace_id, [0; 16]);
        let forced = Extracted {
            sampled_only: Some(true),
            ..Default::default()
        };
        assert!(child_of(&forced, 0, 999_999, &mut rng()).sampled);
    }

    #[test]
    fn unsampled_requests_still_propagate() {
        let t = Telemetry::new(LocalPeer::default(), ExportOptions::default());
        let cfg = TracingConfig {
            sampling_per_million: 0,
            ..TracingConfig::default()
        };
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let span = t
            .start(Some(&cfg), None, &mut h, SpanKind::Client)
            .expect("tracing on");
        assert!(!span.context.sampled);
        let tp = h
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("propagated");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(tp.ends_with("-00"), "{tp}");
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "{tp}: our span is the parent now"
        );
        assert!(t.start(None, None, &mut h, SpanKind::Client).is_none());
    }

    #[test]
    fn local_peer_from_node_metadata() {
        let mut meta = serde_json::Map::new();
        meta.insert("CLUSTER_ID".into(), "us-west".into());
        meta.insert("NAMESPACE".into(), "default".into());
        meta.insert(
            "LABELS".into(),
            serde_json::json!({"app": "productpage", "version": "v1"}),
        );
        let n = NodeIdentity {
            id: "sidecar~127.0.1.1~productpage-v1.default~default.svc.cluster.local".into(),
            cluster: String::new(),
            metadata: meta,
            locality: Default::default(),
        };
        let p = LocalPeer::from_node(&n);
        assert_eq!(p.cluster, "us-west");
        assert_eq!(p.workload, "productpage-v1");
        assert_eq!(p.canonical_service, "productpage");
        assert_eq!(p.namespace, "default");
    }
}
