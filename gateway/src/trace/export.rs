//! Batched OTLP/gRPC export. Requests only `try_send` a finished span into
//! a bounded queue; one task per collector batches (by size or interval)
//! and exports, so a slow or absent collector never delays a request — a
//! full queue drops spans and counts them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use tokio::sync::mpsc;

use super::config::Collector;
use super::context::SpanContext;
use super::{AttrValue, LocalPeer};

/// Server spans for requests arriving at an inbound listener or a gateway;
/// client spans for a sidecar's outbound requests (Envoy's choice too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Spans per export request at most.
    pub batch_size: usize,
    /// A partial batch is sent after this long.
    pub interval: Duration,
    /// Finished spans waiting for export; more are dropped.
    pub queue: usize,
    /// Per export request.
    pub timeout: Duration,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            batch_size: 512,
            interval: Duration::from_secs(1),
            queue: 4096,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FinishedSpan {
    pub context: SpanContext,
    /// OTLP resource `service.name`.
    pub service: Arc<str>,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttrValue)>,
    pub error: bool,
}

/// Handle to one collector's export task.
#[derive(Debug, Clone)]
pub struct Exporter {
    tx: mpsc::Sender<FinishedSpan>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the export task on the current Tokio runtime (`None` outside one).
    pub fn start(c: Collector, local: Arc<LocalPeer>, opts: ExportOptions) -> Option<Exporter> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        rt.spawn(run(c, local, opts, rx, dropped.clone()));
        Some(Exporter { tx, dropped })
    }

    pub fn submit(&self, s: FinishedSpan) {
        if self.tx.try_send(s).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run(
    c: Collector,
    local: Arc<LocalPeer>,
    opts: ExportOptions,
    mut rx: mpsc::Receiver<FinishedSpan>,
    dropped: Arc<AtomicU64>,
) {
    let Collector::Grpc(uri) = &c;
    let channel = match tonic::transport::Endpoint::from_shared(uri.clone()) {
        Ok(ep) => isthmus_identity::channel::connect_lazy(
            &ep.connect_timeout(Duration::from_secs(5))
                .timeout(opts.timeout),
            None,
        ),
        Err(e) => {
            tracing::warn!(collector = %uri, error = %e, "invalid OTLP collector address; spans are dropped");
            while rx.recv().await.is_some() {}
            return;
        }
    };
    let mut client = TraceServiceClient::new(channel);
    let mut batch: Vec<FinishedSpan> = Vec::with_capacity(opts.batch_size);
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures_logged = 0u64;
    loop {
        let flush = tokio::select! {
            s = rx.recv() => match s {
                Some(s) => {
                    batch.push(s);
                    batch.len() >= opts.batch_size
                }
                None => true,
            },
            _ = tick.tick() => !batch.is_empty(),
        };
        if flush && !batch.is_empty() {
            let n = batch.len();
            let req = request(&local, std::mem::take(&mut batch));
            if let Err(e) = client.export(req).await {
                dropped.fetch_add(n as u64, Ordering::Relaxed);
                // One warning per failure streak start, then debug.
                if failures_logged == 0 {
                    tracing::warn!(collector = %uri, spans = n, error = %e, "OTLP export failed; spans dropped");
                } else {
                    tracing::debug!(collector = %uri, spans = n, error = %e, "OTLP export failed");
                }
                failures_logged += 1;
            } else {
                failures_logged = 0;
            }
        }
        if rx.is_closed() && rx.is_empty() && batch.is_empty() {
            return;
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, v: &AttrValue) -> KeyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn skv(key: &str, v: &str) -> KeyValue {
    kv(key, &AttrValue::Str(v.to_string()))
}

/// One `ResourceSpans` per service name (a proxy may report for several
/// connection managers with different `service_name`s).
pub fn request(local: &LocalPeer, spans: Vec<FinishedSpan>) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<Arc<str>, Vec<Span>> = BTreeMap::new();
    for s in spans {
        let proto = Span {
            trace_id: s.context.trace_id.to_vec(),
            span_id: s.context.span_id.to_vec(),
            trace_state: s.context.tracestate.clone().unwrap_or_default(),
            parent_span_id: s
                .context
                .parent_span_id
                .map(|p| p.to_vec())
                .unwrap_or_default(),
            flags: 0x01,
            name: s.name,
            kind: match s.kind {
                SpanKind::Server => span::SpanKind::Server as i32,
                SpanKind::Client => span::SpanKind::Client as i32,
            },
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(s.end),
            attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(Status {
                code: if s.error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        by_service.entry(s.service).or_default().push(proto);
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    skv("service.name", &service),
                    skv("service.namespace", &local.namespace),
                    skv("k8s.namespace.name", &local.namespace),
                    skv("isthmus.cluster", &local.cluster),
                    skv("node_id", &local.node_id),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "isthmus-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_group_by_service_with_ids_and_parent() {
        let ctx = SpanContext {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            sampled: true,
            tracestate: None,
        };
        let mk = |svc: &str| FinishedSpan {
            context: ctx.clone(),
            service: Arc::from(svc),
            name: "n".into(),
            kind: SpanKind::Client,
            start: UNIX_EPOCH + Duration::from_secs(1),
            end: UNIX_EPOCH + Duration::from_secs(2),
            attributes: vec![("http.status_code", AttrValue::Int(200))],
            error: false,
        };
        let r = request(
            &LocalPeer::default(),
            vec![mk("a.default"), mk("b.default"), mk("a.default")],
        );
        assert_eq!(r.resource_spans.len(), 2);
        let a = &r.resource_spans[0].scope_spans[0].spans;
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].trace_id, vec![1; 16]);
        assert_eq!(a[0].parent_span_id, vec![3; 8]);
        assert_eq!(a[0].kind, span::SpanKind::Client as i32);
        assert_eq!(
            a[0].end_time_unix_nano - a[0].start_time_unix_nano,
            1_000_000_000
        );
    }
}
