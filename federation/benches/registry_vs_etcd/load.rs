//! The load generator both systems are driven by: `writers` tasks, each
//! writing 8-byte keys with 256-byte values in a closed loop until the
//! deadline, recording per-write latency and the time of every ack.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const KEY_BYTES: usize = 8;
pub const VALUE_BYTES: usize = 256;
/// Keys cycle over this many values, so both stores stay the same size.
pub const KEYSPACE: u64 = 1000;

pub trait Store: Send + Sync + 'static {
    fn put(&self, key: String, value: String) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadResult {
    pub writers: usize,
    pub ops: u64,
    pub errors: u64,
    pub secs: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Longest time between two consecutive acknowledged writes (any writer).
    pub max_gap_ms: f64,
    pub first_error: Option<String>,
}

impl LoadResult {
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

pub fn key(n: u64) -> String {
    format!("{:0width$x}", n % KEYSPACE, width = KEY_BYTES)
}

pub fn value(n: u64) -> String {
    let c = (b'a' + (n % 26) as u8) as char;
    std::iter::repeat_n(c, VALUE_BYTES).collect()
}

struct WriterLog {
    latencies_us: Vec<u64>,
    acks_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run<S: Store>(store: Arc<S>, writers: usize, duration: Duration) -> LoadResult {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers as u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut log = WriterLog {
                latencies_us: Vec::new(),
                acks_us: Vec::new(),
                errors: 0,
                first_error: None,
            };
            let mut n = w * 7919;
            while Instant::now() < deadline {
                n += 1;
                let t0 = Instant::now();
                match store.put(key(n), value(n)).await {
                    Ok(()) => {
                        let now = Instant::now();
                        log.latencies_us.push((now - t0).as_micros() as u64);
                        log.acks_us.push((now - start).as_micros() as u64);
                    }
                    Err(e) => {
                        log.errors += 1;
                        if log.first_error.is_none() {
                            log.first_error = Some(e);
                        }
                        // Same back-off for both systems while no leader.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            log
        }));
    }
    let mut lat = Vec::new();
    let mut acks = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        if let Ok(log) = t.await {
            lat.extend(log.latencies_us);
            acks.extend(log.acks_us);
            errors += log.errors;
            if first_error.is_none() {
                first_error = log.first_error;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    acks.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i] as f64 / 1000.0
    };
    let max_gap_us = acks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    LoadResult {
        writers,
        ops: lat.len() as u64,
        errors,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_gap_ms: max_gap_us as f64 / 1000.0,
        first_error,
    }
}
