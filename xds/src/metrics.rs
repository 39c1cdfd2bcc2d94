//! Prometheus metrics of the xDS server: our own (`isthmus_xds_*`) and the
//! same facts under istiod's names (`pilot_xds`, `pilot_xds_pushes`,
//! `pilot_xds_push_time`, `pilot_proxy_convergence_time`,
//! `pilot_total_xds_rejects`, `pilot_push_triggers`) so Istio's control
//! plane dashboard and alerts work unchanged.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
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
    outbound: Outbound,
    istio: IstiodNames,
}

/// Built responses not yet handed to the transport (see `outbound.rs`).
#[derive(Clone)]
struct Outbound {
    responses: IntGauge,
    bytes: IntGauge,
    bytes_max: IntGauge,
    /// The exact current value behind `bytes`, for `bytes_max`.
    current: Arc<AtomicI64>,
    /// Serialises raising `bytes_max`, so a lower value never overwrites a
    /// higher one.
    raise_max: Arc<Mutex<()>>,
    waits: IntCounter,
    stalls: IntCounter,
}

impl Outbound {
    fn new(registry: &Registry) -> Result<Outbound, prometheus::Error> {
        let responses = IntGauge::new(
            "isthmus_xds_responses_in_flight",
            "Responses built (resource bodies copied into a message) and not yet handed to the transport",
        )?;
        let bytes = IntGauge::new(
            "isthmus_xds_response_bytes_in_flight",
            "Bytes of the responses in flight, as taken from the response budget",
        )?;
        let bytes_max = IntGauge::new(
            "isthmus_xds_response_bytes_in_flight_max",
            "Highest isthmus_xds_response_bytes_in_flight since the server started; at most the response budget",
        )?;
        let waits = IntCounter::new(
            "isthmus_xds_response_budget_waits_total",
            "Responses that waited for the server-wide response budget before being built",
        )?;
        let stalls = IntCounter::new(
            "isthmus_xds_response_stalls_total",
            "Responses whose budget share was given back because the client did not read on in time",
        )?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(bytes_max.clone()))?;
        registry.register(Box::new(waits.clone()))?;
        registry.register(Box::new(stalls.clone()))?;
        Ok(Outbound {
            responses,
            bytes,
            bytes_max,
            current: Arc::default(),
            raise_max: Arc::default(),
            waits,
            stalls,
        })
    }
}

/// istiod's metric names for the same events.
#[derive(Clone)]
struct IstiodNames {
    xds: IntGauge,
    pushes: IntCounterVec,
    push_time: HistogramVec,
    convergence: Histogram,
    rejects: IntCounterVec,
    triggers: IntCounterVec,
}

impl IstiodNames {
    fn new(registry: &Registry) -> Result<IstiodNames, prometheus::Error> {
        // istiod's buckets for push and convergence times, in seconds.
        let buckets = vec![0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
        let xds = IntGaugeVec::new(
            Opts::new(
                "pilot_xds",
                "Number of endpoints connected to this pilot using XDS.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(xds.clone()))?;
        let pushes = IntCounterVec::new(
            Opts::new(
                "pilot_xds_pushes",
                "Pilot build and send errors for lds, rds, cds and eds.",
            ),
            &["type"],
        )?;
        let push_time = HistogramVec::new(
            HistogramOpts::new(
                "pilot_xds_push_time",
                "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
            )
            .buckets(buckets.clone()),
            &["type"],
        )?;
        let convergence = Histogram::with_opts(
            HistogramOpts::new(
                "pilot_proxy_convergence_time",
                "Delay in seconds between config change and a proxy receiving all required configuration.",
            )
            .buckets(buckets),
        )?;
        let rejects = IntCounterVec::new(
            Opts::new(
                "pilot_total_xds_rejects",
                "Total number of XDS responses from pilot rejected by proxy.",
            ),
            &["type"],
        )?;
        let triggers = IntCounterVec::new(
            Opts::new(
                "pilot_push_triggers",
                "Total number of times a push was triggered, labeled by reason for the push.",
            ),
            &["type"],
        )?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(push_time.clone()))?;
        registry.register(Box::new(convergence.clone()))?;
        registry.register(Box::new(rejects.clone()))?;
        registry.register(Box::new(triggers.clone()))?;
        Ok(IstiodNames {
            xds: xds.with_label_values(&[env!("CARGO_PKG_VERSION")]),
            pushes,
            push_time,
            convergence,
            rejects,
            triggers,
        })
    }
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
            outbound: Outbound::new(registry)?,
            istio: IstiodNames::new(registry)?,
        })
    }

    /// A response of `bytes` (its budget share) was built.
    pub(crate) fn built(&self, bytes: i64) {
        let o = &self.outbound;
        o.responses.inc();
        o.bytes.add(bytes);
        let now = o.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > o.bytes_max.get() {
            // Poisoning cannot leave a gauge inconsistent.
            let _serial = o.raise_max.lock().unwrap_or_else(|e| e.into_inner());
            if now > o.bytes_max.get() {
                o.bytes_max.set(now);
            }
        }
    }

    /// A built response was handed over (or its share given back).
    pub(crate) fn handed_over(&self, bytes: i64) {
        let o = &self.outbound;
        o.current.fetch_sub(bytes, Ordering::Relaxed);
        o.responses.dec();
        o.bytes.sub(bytes);
    }

    pub(crate) fn budget_wait(&self) {
        self.outbound.waits.inc();
    }

    pub(crate) fn stalled(&self) {
        self.outbound.stalls.inc();
    }

    pub(crate) fn pushed(&self, t: TypeUrl, latency: Option<std::time::Duration>) {
        self.pushes.with_label_values(&[t.short()]).inc();
        self.istio.pushes.with_label_values(&[t.short()]).inc();
        if let Some(l) = latency {
            let secs = l.as_secs_f64();
            self.push_latency
                .with_label_values(&[t.short()])
                .observe(secs);
            self.istio
                .push_time
                .with_label_values(&[t.short()])
                .observe(secs);
            self.istio.convergence.observe(secs);
        }
    }

    /// A push was published; `scope` is `full`, `types` or `endpoints`.
    pub(crate) fn published(&self, scope: &str) {
        self.published.with_label_values(&[scope]).inc();
        // istiod's reasons: a full push is a config change, an EDS-only one
        // an endpoint change, a types-only one (SDS) a secret change.
        let reason = match scope {
            "endpoints" => "endpoint",
            "types" => "secret",
            _ => "config",
        };
        self.istio.triggers.with_label_values(&[reason]).inc();
    }

    pub(crate) fn generated(&self, t: TypeUrl) {
        self.generations.with_label_values(&[t.short()]).inc();
    }

    pub(crate) fn nacked(&self, t: TypeUrl) {
        self.nacks.with_label_values(&[t.short()]).inc();
        self.istio.rejects.with_label_values(&[t.short()]).inc();
    }

    pub(crate) fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Counts an open stream until the guard is dropped.
    pub(crate) fn connection(&self) -> ConnectedGuard {
        self.connected.inc();
        self.istio.xds.inc();
        ConnectedGuard(self.connected.clone(), self.istio.xds.clone())
    }
}

pub(crate) struct ConnectedGuard(IntGauge, IntGauge);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.dec();
        self.1.dec();
    }
}
