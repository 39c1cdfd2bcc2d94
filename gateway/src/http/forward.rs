//! The router filter: builds the upstream request, picks a host, uses a
//! pooled connection or opens one, and retries per the retry policy (other
//! hosts first with `previous_hosts`, other priorities with
//! `previous_priorities`; the balancer moves to the next priority when a
//! whole priority is excluded or unhealthy). Bodies up to
//! [`BUFFER_LIMIT`] are buffered so they can be retried and mirrored;
//! larger or streaming bodies get one attempt once a connection is up.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use rand::Rng;

use super::mirror::mirror;
use super::pool::{Sender, Wire};
use super::respond::{apply_ops, local, strip_hop_by_hop, RequestLog};
use super::retry::{
    admit_retry, backoff, retriable_error, retriable_response, tried_priorities, RetrySlot,
};
use super::timeouts::{StreamClock, Tracked};
use super::upgrade::{is_upgrade, tunnel};
use super::{full, Body, BoxError};
use crate::config::{ForwardAction, HashOn, HeaderOps, RetryPolicy, UpstreamProtocol};
use crate::lb::ring_hash::hash64;
use crate::outlier::Outcome;
use crate::proxy::connection::ProxyContext;
use crate::proxy::upstream::{self, UpstreamError};
use crate::state::ClusterRuntime;

/// Largest request body kept in memory for retries and mirrors.
pub const BUFFER_LIMIT: u64 = 1024 * 1024;

/// What the connection manager decided for one request.
#[derive(Debug)]
pub struct Forwarding<'a> {
    pub action: &'a ForwardAction,
    pub cluster: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub scheme: &'a str,
    /// Request/response header edits, most specific first.
    pub header_levels: Vec<&'a HeaderOps>,
    pub retry: Option<&'a RetryPolicy>,
    pub peer: SocketAddr,
    /// The destination before an iptables REDIRECT (`ORIGINAL_DST` clusters).
    pub original_dst: Option<SocketAddr>,
    /// The stream's activity clock, which the request body moves.
    pub clock: &'a StreamClock,
}

pub(super) enum ReqBody {
    Buffered(Bytes),
    Streaming(Option<Tracked<Incoming>>),
}

/// Why one attempt failed.
pub(super) enum AttemptError {
    Overflow,
    NoHost,
    Connect(String),
    /// The request was sent and the stream reset / connection closed.
    Reset(String, bool),
    Timeout,
    /// The cluster does not exist (misconfiguration).
    NoCluster,
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

pub async fn forward(
    ctx: &ProxyContext,
    f: Forwarding<'_>,
    mut req: Request<Incoming>,
    log: &mut RequestLog,
) -> Response<Body> {
    log.cluster = Some(f.cluster.to_string());
    let Some(cluster) = ctx.clusters.borrow().get(f.cluster) else {
        log.flags.add("NC");
        return local(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n", &log.flags);
    };
    // An ORIGINAL_DST cluster's only host is where the client was going.
    let pinned = match (&cluster.config.discovery, f.original_dst) {
        (crate::config::Discovery::OriginalDst, Some(dst)) => {
            Some(crate::listener::original_dst::host(dst))
        }
        (crate::config::Discovery::OriginalDst, None) => {
            log.flags.add("UH");
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no original destination (the connection was not redirected)\n",
                &log.flags,
            );
        }
        _ => None,
    };
    let upgrade = is_upgrade(&req);
    let down_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let version = req.version();
    let (mut parts, body) = req.into_parts();
    let body = Tracked::new(body, f.clock.clone());
    strip_hop_by_hop(&mut parts.headers, upgrade);
    apply_ops(&mut parts.headers, f.header_levels.iter().copied(), true);
    if cluster.tls.is_some() && log.reporter == "source" {
        // Istio's metadata exchange, towards mesh (mTLS) upstreams only.
        if let Some(own) = ctx.metrics.local().exchange_headers() {
            own.insert(&mut parts.headers);
        }
    }
    if !parts.headers.contains_key(X_REQUEST_ID) {
        parts.headers.insert(X_REQUEST_ID, request_id());
    }
    parts.headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if f.scheme == "https" { "https" } else { "http" }),
    );
    let authority = f
        .action
        .host_rewrite
        .as_deref()
        .unwrap_or(f.authority)
        .to_string();
    let small = body.size_hint().upper().is_some_and(|u| u <= BUFFER_LIMIT);
    let mut body = if !upgrade && (body.is_end_stream() || small) {
        match body.collect().await {
            Ok(c) => ReqBody::Buffered(c.to_bytes()),
            Err(e) => {
                log.flags.add("DPE");
                return local(
                    StatusCode::BAD_REQUEST,
                    &format!("reading request body: {e}\n"),
                    &log.flags,
                );
            }
        }
    } else {
        ReqBody::Streaming(Some(body))
    };
    if let ReqBody::Buffered(b) = &body {
        log.bytes_received = b.len() as u64;
        mirror(ctx, &f, &parts, &authority, b);
    }
    let hash = request_hash(f.action, &parts.headers, f.path, f.peer);
    let wire = match cluster.http_pool.options().protocol {
        UpstreamProtocol::Http1 => Wire::Http1,
        UpstreamProtocol::Http2 => Wire::Http2,
        UpstreamProtocol::Downstream if version == Version::HTTP_2 => Wire::Http2,
        UpstreamProtocol::Downstream => Wire::Http1,
    };
    let wire = if upgrade { Wire::Http1 } else { wire };
    let retries = f.retry.map_or(0, |r| r.num_retries);
    let per_try = f.retry.and_then(|r| r.per_try_timeout);
    let overall = f.action.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut left_priorities: Vec<u32> = Vec::new();
    let mut attempt = 0u32;
    // Held while a retry is in flight (the cluster's retry circuit breaker).
    let mut retry_slot = None;
    loop {
        attempt += 1;
        log.attempts = attempt;
        let mut exclude: Vec<SocketAddr> = if f.retry.is_some_and(|r| r.previous_hosts) {
            tried.clone()
        } else {
            Vec::new()
        };
        if let Some(every) = f.retry.and_then(|r| r.previous_priorities) {
            if attempt > 1 && (attempt - 1) % every.max(1) == 0 {
                left_priorities = tried_priorities(&cluster, &tried);
            }
            // Hosts of the priorities left behind; if that is every host,
            // the balancer falls back to all of them (Envoy resets too).
            exclude.extend(
                cluster
                    .lb
                    .hosts()
                    .iter()
                    .filter(|h| left_priorities.contains(&h.priority))
                    .map(|h| h.addr),
            );
        }
        // The last possible attempt takes the request head instead of a copy.
        let head = if attempt > retries {
            Head::Owned(std::mem::replace(&mut parts, empty_parts()))
        } else {
            Head::Shared(&parts)
        };
        // Made inside each arm: a future held in a variable and then
        // wrapped in the timeout would be stored twice in this future.
        let one = || {
            one_attempt(
                ctx,
                &cluster,
                wire,
                hash,
                &exclude,
                pinned.as_ref(),
                head,
                &mut body,
                f.path,
                &authority,
                per_try,
            )
        };
        let result = match overall {
            Some(deadline) => match tokio::time::timeout_at(deadline, one()).await {
                Ok(r) => r,
                Err(_) => {
                    log.flags.add("UT");
                    return local(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout\n",
                        &log.flags,
                    );
                }
            },
            None => one().await,
        };
        let can_retry = attempt <= retries
            && matches!(body, ReqBody::Buffered(_) | ReqBody::Streaming(Some(_)));
        let (addr, outcome) = result;
        if let Some(a) = addr {
            tried.push(a);
            log.upstream_host = Some(a);
        }
        let retriable = match &outcome {
            Ok(resp) => {
                record_outcome(ctx, &cluster, addr, resp.status());
                f.retry.is_some_and(|p| retriable_response(p, resp))
            }
            Err(e) => f.retry.is_some_and(|p| retriable_error(p, e)),
        };
        if can_retry && retriable {
            // The retried attempt is over; its slot must not count against the next.
            retry_slot = None;
            if let Some(slot) = retry(ctx, &cluster, f.cluster, log) {
                retry_slot = Some(slot);
                backoff(attempt).await;
                continue;
            }
        } else if attempt > 1 && (retriable || outcome.is_err()) {
            log.flags.add("URX");
        }
        drop(retry_slot);
        let mut resp = match outcome {
            Ok(resp) => resp,
            Err(e) => return error_response(ctx, f.cluster, e, log),
        };
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(down) = down_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                tokio::spawn(tunnel(down, up));
            }
        }
        let (mut rp, rb) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers, status == StatusCode::SWITCHING_PROTOCOLS);
        apply_ops(&mut rp.headers, f.header_levels.iter().copied(), false);
        return Response::from_parts(rp, rb.map_err(|e| Box::new(e) as BoxError).boxed_unsync());
    }
}

/// Counts a retry and holds its slot, or counts the overflow (flag `UO`)
/// when the cluster's retry circuit breaker is full; the answer at hand
/// is then returned as it is.
fn retry(
    ctx: &ProxyContext,
    cluster: &ClusterRuntime,
    name: &str,
    log: &mut RequestLog,
) -> Option<RetrySlot> {
    let Some(slot) = admit_retry(cluster) else {
        ctx.metrics
            .upstream_rq_retry_overflow
            .with_label_values(&[name])
            .inc();
        log.flags.add("UO");
        return None;
    };
    ctx.metrics
        .upstream_rq_retry
        .with_label_values(&[name])
        .inc();
    Some(slot)
}

fn error_response(
    ctx: &ProxyContext,
    cluster: &str,
    e: AttemptError,
    log: &mut RequestLog,
) -> Response<Body> {
    let (status, flag, msg) = match e {
        AttemptError::Overflow => {
            ctx.metrics
                .upstream_rq_overflow
                .with_label_values(&[cluster])
                .inc();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
                "upstream overflow (circuit breaker)".to_string(),
            )
        }
        AttemptError::NoHost => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            "no healthy upstream".to_string(),
        ),
        AttemptError::NoCluster => (
            StatusCode::SERVICE_UNAVAILABLE,
            "NC",
            "no cluster".to_string(),
        ),
        AttemptError::Connect(m) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UF",
            format!("upstream connect error: {m}"),
        ),
        AttemptError::Reset(m, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UC",
            format!("upstream reset: {m}"),
        ),
        AttemptError::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "UT",
            "upstream per-try timeout".to_string(),
        ),
    };
    log.flags.add(flag);
    local(status, &format!("{msg}\n"), &log.flags)
}

fn request_hash(
    a: &ForwardAction,
    h: &http::HeaderMap,
    path: &str,
    peer: SocketAddr,
) -> Option<u64> {
    for on in &a.hash {
        let key = match on {
            HashOn::Header(n) => h.get(n.as_str()).map(|v| v.as_bytes().to_vec()),
            HashOn::SourceIp => Some(peer.ip().to_string().into_bytes()),
            HashOn::QueryParameter(q) => path.split_once('?').and_then(|(_, qs)| {
                qs.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == q).then(|| v.as_bytes().to_vec())
                })
            }),
        };
        if let Some(k) = key {
            return Some(hash64(&k));
        }
    }
    None
}

fn record_outcome(
    ctx: &ProxyContext,
    cluster: &ClusterRuntime,
    addr: Option<SocketAddr>,
    s: StatusCode,
) {
    let Some(addr) = addr else { return };
    let Some(host) = cluster.lb.hosts().iter().find(|h| h.addr == addr) else {
        return;
    };
    let outcome = match s.as_u16() {
        502..=504 => Outcome::GatewayError,
        500..=599 => Outcome::ServerError,
        _ => Outcome::Success,
    };
    upstream::record(cluster, host, outcome, &ctx.metrics);
}

/// The request head for one attempt: borrowed while a retry may still need
/// it, moved into the last possible attempt. Moved once per attempt, so
/// its size costs less than boxing the owned head would.
#[allow(clippy::large_enum_variant)]
pub(super) enum Head<'a> {
    Shared(&'a http::request::Parts),
    Owned(http::request::Parts),
}

fn empty_parts() -> http::request::Parts {
    Request::new(()).into_parts().0
}

/// Reserves one of the cluster's `max_requests`; released on drop.
struct RequestSlot(Arc<crate::state::ClusterCounters>);
impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn one_attempt(
    ctx: &ProxyContext,
    cluster: &ClusterRuntime,
    wire: Wire,
    hash: Option<u64>,
    exclude: &[SocketAddr],
    pinned: Option<&crate::lb::Host>,
    head: Head<'_>,
    body: &mut ReqBody,
    path: &str,
    authority: &str,
    per_try: Option<Duration>,
) -> (Option<SocketAddr>, Result<Response<Incoming>, AttemptError>) {
    let counters = cluster.counters.clone();
    if counters.requests.fetch_add(1, Ordering::AcqRel)
        >= u64::from(cluster.config.circuit_breakers.max_requests)
    {
        counters.requests.fetch_sub(1, Ordering::AcqRel);
        return (None, Err(AttemptError::Overflow));
    }
    let slot = RequestSlot(counters);
    let host = match pinned {
        Some(h) => Some(h.clone()),
        None => cluster
            .lb
            .pick(hash, exclude)
            .or_else(|| cluster.lb.pick(hash, &[])),
    };
    let Some(host) = host else {
        if !cluster.warm {
            return (None, Err(AttemptError::NoHost));
        }
        ctx.metrics
            .upstream_cx_none_healthy
            .with_label_values(&[&cluster.config.name])
            .inc();
        return (None, Err(AttemptError::NoHost));
    };
    let addr = host.addr;
    let sender = match cluster.http_pool.take(addr, wire) {
        Some(s) => s,
        // Boxed: opening a connection (TCP, TLS, the HTTP handshake) is a
        // large future that only a pool miss needs; inline, its size would
        // be carried, and copied, by every request's future.
        None => match Box::pin(open(ctx, cluster, &host, wire)).await {
            Ok(s) => s,
            Err((tried, e)) => return (tried.then_some(addr), Err(e)),
        },
    };
    // The body is taken only now: a connect failure leaves a streaming body
    // unread, so that attempt can still be retried elsewhere.
    let req_body = match body {
        ReqBody::Buffered(b) => full(b.clone()),
        ReqBody::Streaming(s) => match s.take() {
            Some(b) => b.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
            None => {
                return (
                    Some(addr),
                    Err(AttemptError::Reset(
                        "request body already sent upstream".into(),
                        false,
                    )),
                )
            }
        },
    };
    let parts = match head {
        Head::Shared(p) => p.clone(),
        Head::Owned(p) => p,
    };
    let mut req = Request::from_parts(parts, req_body);
    let tls = cluster.tls.is_some();
    let send = async {
        match sender {
            Sender::H1(mut s, uses) => {
                // An HTTP/1 request line carries the origin form; the
                // downstream's is usually it already (no rewrite, no h2).
                let same_uri = req.uri().scheme().is_none()
                    && req.uri().path_and_query().map(|p| p.as_str()) == Some(path);
                if !same_uri {
                    if let Ok(u) = path.parse::<Uri>() {
                        *req.uri_mut() = u;
                    }
                }
                let same_host = req
                    .headers()
                    .get(http::header::HOST)
                    .is_some_and(|h| h.as_bytes() == authority.as_bytes());
                if !same_host {
                    if let Ok(v) = HeaderValue::from_str(authority) {
                        req.headers_mut().insert(http::header::HOST, v);
                    }
                }
                *req.version_mut() = Version::HTTP_11;
                if s.ready().await.is_err() {
                    return Err(AttemptError::Reset(
                        "connection closed before the request".into(),
                        true,
                    ));
                }
                let r = s.send_request(req).await;
                if r.is_ok() {
                    cluster.http_pool.put_h1(addr, s, uses + 1);
                }
                r.map_err(|e| classify(&e))
            }
            Sender::H2(mut s) => {
                let scheme = if tls { "https" } else { "http" };
                if let Ok(u) = format!("{scheme}://{authority}{path}").parse::<Uri>() {
                    *req.uri_mut() = u;
                }
                req.headers_mut().remove(http::header::HOST);
                *req.version_mut() = Version::HTTP_2;
                if s.ready().await.is_err() {
                    return Err(AttemptError::Reset(
                        "connection closed before the request".into(),
                        true,
                    ));
                }
                s.send_request(req).await.map_err(|e| classify(&e))
            }
        }
    };
    let result = match per_try {
        Some(t) => match tokio::time::timeout(t, send).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError::Timeout),
        },
        None => send.await,
    };
    if let Err(AttemptError::Reset(..)) | Err(AttemptError::Timeout) = &result {
        upstream::record(cluster, &host, Outcome::GatewayError, &ctx.metrics);
    }
    drop(slot);
    (Some(addr), result)
}

/// A new connection to `host`, ready for one request. The error says
/// whether the host was tried (it counts for `previous_hosts`).
async fn open(
    ctx: &ProxyContext,
    cluster: &ClusterRuntime,
    host: &crate::lb::Host,
    wire: Wire,
) -> Result<Sender, (bool, AttemptError)> {
    let alpn = super::mesh_alpn::offer(cluster.config.tls.as_ref(), wire);
    let up = match upstream::connect_host_with_alpn(cluster, host, &ctx.metrics, alpn).await {
        Ok(u) => u,
        Err(UpstreamError::Overflow { .. }) | Err(UpstreamError::PendingOverflow { .. }) => {
            return Err((false, AttemptError::Overflow))
        }
        Err(UpstreamError::UnknownCluster(_)) => return Err((false, AttemptError::NoCluster)),
        Err(UpstreamError::NoHost(_)) => return Err((false, AttemptError::NoHost)),
        Err(e) => return Err((true, AttemptError::Connect(e.to_string()))),
    };
    cluster
        .http_pool
        .handshake(up, wire)
        .await
        .map_err(|e| (true, AttemptError::Connect(format!("HTTP handshake: {e}"))))
}

fn classify(e: &hyper::Error) -> AttemptError {
    use std::error::Error;
    let refused = e
        .source()
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(|h| h.reason())
        .is_some_and(|r| r == h2::Reason::REFUSED_STREAM);
    AttemptError::Reset(e.to_string(), refused || e.is_canceled())
}

/// A random 128-bit id as 32 hex digits (Envoy's `x-request-id` is a UUID;
/// any unique token serves the same purpose).
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::rng().random::<u128>();
    let mut out = [0u8; 32];
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}
