//! The retry policy's decisions: whether an answer or an error is retried,
//! how long to wait, which priorities earlier attempts used, and whether
//! the cluster's retry circuit breaker lets one more retry run.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use rand::Rng;

use super::forward::AttemptError;
use crate::config::{RetryPolicy, GRPC_RETRY_CODES};
use crate::state::{ClusterCounters, ClusterRuntime};

/// One retry in flight to a cluster, counted until dropped (after the
/// retried attempt, when the next decision is made or the answer returned).
pub(super) struct RetrySlot(Arc<ClusterCounters>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot for one more retry, or `None` when the cluster's `max_retries`
/// or retry budget is used up (Envoy's `upstream_rq_retry_overflow`).
/// The budget is taken of the requests in flight and waiting for a
/// connection right now, the retries among them included.
pub(super) fn admit_retry(cluster: &ClusterRuntime) -> Option<RetrySlot> {
    let c = &cluster.counters;
    let active = c.requests.load(Ordering::Acquire) + c.pending.load(Ordering::Acquire);
    let limit = cluster.config.circuit_breakers.retry_limit(active);
    if c.retries.fetch_add(1, Ordering::AcqRel) >= limit {
        c.retries.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(RetrySlot(c.clone()))
}

pub(super) fn tried_priorities(cluster: &ClusterRuntime, tried: &[SocketAddr]) -> Vec<u32> {
    let mut out: Vec<u32> = cluster
        .lb
        .hosts()
        .iter()
        .filter(|h| tried.contains(&h.addr))
        .map(|h| h.priority)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub(super) async fn backoff(attempt: u32) {
    // Envoy's default: 25 ms base, doubling, jittered, at most 10x base.
    let base = 25u64 << attempt.saturating_sub(1).min(3);
    let ms = rand::rng().random_range(0..=base.min(250));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

pub(super) fn retriable_response<B>(p: &RetryPolicy, r: &Response<B>) -> bool {
    let s = r.status().as_u16();
    if p.on.five_xx && s >= 500 {
        return true;
    }
    if p.on.gateway_error && matches!(s, 502..=504) {
        return true;
    }
    if p.on.retriable_status_codes && p.retriable_status_codes.contains(&s) {
        return true;
    }
    // Only a policy with gRPC conditions looks (most have none).
    if !p.on.grpc.iter().any(|on| *on) {
        return false;
    }
    if let Some(code) = r
        .headers()
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
    {
        return GRPC_RETRY_CODES
            .iter()
            .enumerate()
            .any(|(i, (_, c))| p.on.grpc[i] && *c == code);
    }
    false
}

pub(super) fn retriable_error(p: &RetryPolicy, e: &AttemptError) -> bool {
    match e {
        AttemptError::Connect(_) | AttemptError::NoHost => {
            p.on.connect_failure || p.on.five_xx || p.on.gateway_error
        }
        AttemptError::Reset(_, refused) => {
            p.on.reset || p.on.five_xx || (*refused && p.on.refused_stream)
        }
        AttemptError::Timeout => p.on.five_xx || p.on.gateway_error,
        AttemptError::Overflow | AttemptError::NoCluster => false,
    }
}
