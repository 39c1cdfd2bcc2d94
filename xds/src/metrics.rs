//! Prometheus metrics of the xDS server.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::types::TypeUrl;

#[derive(Clone)]
pub(crate) struct Metrics {
    pushes: IntCounterVec,
    push_latency: HistogramVec,
    nacks: IntCounterVec,
    connected: IntGauge,
    rejected: IntCounterVec,
    published: IntCounterVec,
    generations: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let pushes = IntCounterVec::new(
            Opts::new(
                "isthmus_xds_pushes_total",
                "xDS responses sent, by resource type",
            ),
            &["type"],
        )?;
        let push_latency = HistogramVec::new(
            HistogramOpts::new(
                "isthmus_xds_push_latency_seconds",
                "From the first input change of a push to its response being queued on a stream",
            )
            .buckets(exponential_buckets(0.001, 2.0, 15)?),
            &["type"],
        )?;
        let nacks = IntCounterVec::new(
            Opts::new(
                "isthmus_xds_nacks_total",
                "Responses rejected by proxies, by resource type",
            ),
            &["type"],
        )?;
        let connected = IntGauge::new("isthmus_xds_connected_proxies", "Open xDS streams")?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "isthmus_xds_rejected_streams_total",
                "Streams refused before serving, by reason",
            ),
            &["reason"],
        )?;
        let published = IntCounterVec::new(
            Opts::new(
                "isthmus_xds_published_pushes_total",
                "Debounced pushes, by what they touch: full, types (e.g. secrets only) or endpoints (EDS of some clusters)",
            ),
            &["scope"],
        )?;
        let generations = IntCounterVec::new(
            Opts::new(
                "isthmus_xds_generations_total",
                "Generator calls, by resource type; proxies of one shape share one call per push",
            ),
            &["type"],
        )?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(generations.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(push_latency.clone()))?;
        registry.register(Box::new(nacks.clone()))?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Metrics {
            pushes,
            push_latency,
            nacks,
            connected,
            rejected,
            published,
            generations,
        })
    }

    pub(crate) fn pushed(&self, t: TypeUrl, latency: Option<std::time::Duration>) {
        self.pushes.with_label_values(&[t.short()]).inc();
        if let Some(l) = latency {
            self.push_latency
                .with_label_values(&[t.short()])
                .observe(l.as_secs_f64());
        }
    }

    /// A push was published; `scope` is `full`, `types` or `endpoints`.
    pub(crate) fn published(&self, scope: &str) {
        self.published.with_label_values(&[scope]).inc();
    }

    pub(crate) fn generated(&self, t: TypeUrl) {
        self.generations.with_label_values(&[t.short()]).inc();
    }

    pub(crate) fn nacked(&self, t: TypeUrl) {
        self.nacks.with_label_values(&[t.short()]).inc();
    }

    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Counts an open stream until the guard is dropped.
    pub(crate) fn connection(&self) -> ConnectedGuard {
        self.connected.inc();
        ConnectedGuard(self.connected.clone())
    }
}

pub(crate) struct ConnectedGuard(IntGauge);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
