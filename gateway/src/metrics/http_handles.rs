//! The per-request cost of Istio's HTTP metrics, bounded: turning a finished
//! request into 25 label values and looking each of the four metrics up by
//! them (hashing every value, a lock per metric) cost more than proxying a
//! small request. Requests of one caller to one cluster with one outcome
//! repeat the same inputs, so the resolved counter and histograms are kept
//! by those inputs and the labels are only built for a new combination.
//!
//! Correct only because label sets are never removed from the metric
//! vectors (a removed child would keep counting unseen).
//!
//! The peer is compared by identity: peers come from a bounded interner,
//! so equal descriptions are almost always one `Arc`, and an entry holds
//! its `Arc`, so an address cannot be reused for another peer while the
//! entry lives. Two `Arc`s with equal content only cost a second entry
//! with the same handles.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use prometheus::{Histogram, IntCounter};

use super::workload::Workload;

/// Distinct input combinations kept; past it the cache starts over (the
/// metric vectors keep every label set regardless).
const MAX_ENTRIES: usize = 4096;

/// Everything the labels of an HTTP request depend on.
#[derive(Debug, Clone, Copy)]
pub struct HttpInputs<'a> {
    pub reporter: &'a str,
    pub peer: Option<&'a Arc<Workload>>,
    pub downstream_principal: Option<&'a str>,
    pub cluster: &'a str,
    pub grpc: bool,
    pub status: u16,
    pub grpc_status: Option<&'a str>,
    pub flags: &'a str,
    /// This proxy's own SPIFFE ID (it is part of the labels).
    pub local_id: Option<&'a str>,
}

impl HttpInputs<'_> {
    fn fingerprint(&self) -> u64 {
        // Not keyed: the inputs come from this proxy's own configuration
        // and the interner, not from a client that could aim collisions.
        let mut h = foldhash::fast::FixedState::with_seed(0).build_hasher();
        self.reporter.hash(&mut h);
        self.peer.map(Arc::as_ptr).hash(&mut h);
        self.downstream_principal.hash(&mut h);
        self.cluster.hash(&mut h);
        self.grpc.hash(&mut h);
        self.status.hash(&mut h);
        self.grpc_status.hash(&mut h);
        self.flags.hash(&mut h);
        self.local_id.hash(&mut h);
        h.finish()
    }
}

#[derive(Debug)]
struct OwnedInputs {
    reporter: String,
    peer: Option<Arc<Workload>>,
    downstream_principal: Option<String>,
    cluster: String,
    grpc: bool,
    status: u16,
    grpc_status: Option<String>,
    flags: String,
    local_id: Option<String>,
}

impl OwnedInputs {
    fn of(i: &HttpInputs<'_>) -> Self {
        OwnedInputs {
            reporter: i.reporter.to_string(),
            peer: i.peer.cloned(),
            downstream_principal: i.downstream_principal.map(str::to_string),
            cluster: i.cluster.to_string(),
            grpc: i.grpc,
            status: i.status,
            grpc_status: i.grpc_status.map(str::to_string),
            flags: i.flags.to_string(),
            local_id: i.local_id.map(str::to_string),
        }
    }

    fn matches(&self, i: &HttpInputs<'_>) -> bool {
        self.status == i.status
            && self.grpc == i.grpc
            && self.reporter == i.reporter
            && self.cluster == i.cluster
            && self.flags == i.flags
            && match (&self.peer, i.peer) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
            && self.downstream_principal.as_deref() == i.downstream_principal
            && self.grpc_status.as_deref() == i.grpc_status
            && self.local_id.as_deref() == i.local_id
    }
}

/// The four metrics of one label set.
#[derive(Debug, Clone)]
pub struct HttpHandles {
    pub requests: IntCounter,
    pub duration: Histogram,
    pub request_bytes: Histogram,
    pub response_bytes: Histogram,
}

impl HttpHandles {
    pub fn record(&self, duration_ms: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

#[derive(Debug, Default)]
pub struct HandleCache {
    entries: Mutex<HashMap<u64, Vec<(OwnedInputs, HttpHandles)>>>,
}

impl HandleCache {
    /// Records one request with the handles for `inputs`, resolving them
    /// with `resolve` the first time these inputs are seen.
    pub fn record(
        &self,
        inputs: &HttpInputs<'_>,
        resolve: impl FnOnce() -> HttpHandles,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let key = inputs.fingerprint();
        {
            let map = self.lock();
            if let Some((_, h)) = map
                .get(&key)
                .and_then(|v| v.iter().find(|(k, _)| k.matches(inputs)))
            {
                h.record(duration_ms, request_bytes, response_bytes);
                return;
            }
        }
        // Resolved outside the lock: it takes the metric vectors' own locks.
        let handles = resolve();
        handles.record(duration_ms, request_bytes, response_bytes);
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let slot = map.entry(key).or_default();
        if !slot.iter().any(|(k, _)| k.matches(inputs)) {
            slot.push((OwnedInputs::of(inputs), handles));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<(OwnedInputs, HttpHandles)>>> {
        // Only inserts and lookups happen under the lock; a panic cannot
        // leave the map half-updated, so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn entry_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, Opts};

    fn handles(name: &str) -> HttpHandles {
        let h = |n: &str| {
            Histogram::with_opts(HistogramOpts::new(format!("{name}_{n}"), "h")).expect("histogram")
        };
        HttpHandles {
            requests: IntCounter::with_opts(Opts::new(format!("{name}_total"), "c"))
                .expect("counter"),
            duration: h("duration"),
            request_bytes: h("req"),
            response_bytes: h("resp"),
        }
    }

    fn inputs<'a>(
        peer: Option<&'a Arc<Workload>>,
        status: u16,
        id: Option<&'a str>,
    ) -> HttpInputs<'a> {
        HttpInputs {
            reporter: "source",
            peer,
            downstream_principal: None,
            cluster: "outbound|80||web",
            grpc: false,
            status,
            grpc_status: None,
            flags: "-",
            local_id: id,
        }
    }

    #[test]
    fn same_inputs_resolve_once_and_count_every_request() {
        let cache = HandleCache::default();
        let ok = handles("ok");
        let mut resolved = 0;
        for _ in 0..3 {
            cache.record(
                &inputs(None, 200, Some("spiffe://td/ns/a/sa/b")),
                || {
                    resolved += 1;
                    ok.clone()
                },
                1.0,
                0,
                10,
            );
        }
        assert_eq!(resolved, 1);
        assert_eq!(ok.requests.get(), 3);
        assert_eq!(ok.response_bytes.get_sample_sum(), 30.0);
        assert_eq!(cache.entry_count(), 1);
    }

    #[test]
    fn any_differing_input_gets_its_own_label_set() {
        let cache = HandleCache::default();
        let peer = Arc::new(Workload {
            name: "reviews".into(),
            ..Default::default()
        });
        let other_peer = Arc::new(Workload {
            name: "ratings".into(),
            ..Default::default()
        });
        let cases = [
            inputs(None, 200, None),
            inputs(None, 503, None),
            inputs(Some(&peer), 200, None),
            inputs(Some(&other_peer), 200, None),
            inputs(None, 200, Some("spiffe://td/ns/a/sa/b")),
        ];
        let all: Vec<HttpHandles> = (0..cases.len())
            .map(|i| handles(&format!("case{i}")))
            .collect();
        for (i, c) in cases.iter().enumerate() {
            cache.record(c, || all[i].clone(), 1.0, 0, 0);
        }
        for (i, c) in cases.iter().enumerate() {
            cache.record(c, || panic!("case {i} resolved twice"), 1.0, 0, 0);
        }
        assert_eq!(cache.entry_count(), cases.len());
        assert!(all.iter().all(|h| h.requests.get() == 2));
    }
}
