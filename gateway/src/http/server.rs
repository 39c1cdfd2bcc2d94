//! The HTTP connection manager: serves one downstream connection with
//! hyper (HTTP/1.1, h2c by prior knowledge, or h2 via ALPN), routes each
//! request, runs the fault filter, and hands it to the router filter.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use rand::Rng;
use tokio::time::Instant;

use super::forward::{forward, Forwarding};
use super::respond::{apply_ops, grpc_status, local, Logged, RequestLog};
use super::router::{decide, Decision, RequestMeta};
use super::timeouts::{ConnActivity, Expired, StreamClock, Watched};
use super::{full, Body};
use crate::config::{AbortWith, Codec, FaultConfig, HttpConfig, RouteSource, RouteTable};
use crate::proxy::connection::ProxyContext;
use crate::proxy::BoxIo;

/// Facts about the downstream connection every request inherits.
#[derive(Debug, Clone)]
pub struct Downstream {
    /// The listener's name, shared by every request's log.
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub identity: Option<String>,
    pub tls: bool,
    /// ALPN negotiated `h2` on a TLS connection.
    pub alpn_h2: bool,
    /// The client as its verified certificate describes it (Istio labels).
    pub peer_workload: Option<Arc<crate::metrics::Workload>>,
    /// The local address the connection arrived on (RBAC `destination_*`).
    pub local: Option<SocketAddr>,
    /// The destination before an iptables REDIRECT (`ORIGINAL_DST` clusters).
    pub original_dst: Option<SocketAddr>,
    /// SNI of the ClientHello (RBAC `requested_server_name`).
    pub sni: Option<String>,
    /// Tracing and access logs of this connection manager (crate::trace::http).
    pub telemetry: Option<crate::trace::http::HttpTelemetry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("HTTP connection: {0}")]
    Http(String),
}

/// What every request of one connection shares.
struct Conn {
    cfg: Arc<HttpConfig>,
    ctx: ProxyContext,
    down: Downstream,
}

/// Serves one connection until it closes.
pub async fn serve(
    cfg: Arc<HttpConfig>,
    ctx: ProxyContext,
    io: BoxIo,
    down: Downstream,
) -> Result<(), ServeError> {
    let listener = down.listener.clone();
    let (exec, mut streams) = super::streams::local();
    let mut builder = auto::Builder::new(exec);
    match cfg.codec {
        Codec::Http1 => builder = builder.http1_only(),
        Codec::Http2 => builder = builder.http2_only(),
        Codec::Auto if down.alpn_h2 => builder = builder.http2_only(),
        Codec::Auto => {}
    }
    // hyper's read buffer is the coarse bound on the head (a head that does
    // not fit gets 431); `head_limit` applies the exact one per request.
    // hyper's header timer also runs while a keep-alive connection waits for
    // its next request, so it is bounded by the idle timeout as well.
    let header_timeout = match (cfg.request_headers_timeout, cfg.idle_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // One flat write per response: header and a small body in one buffer
    // beat a vectored write (measured ~2% on small responses), and TLS
    // would encrypt each slice as its own record anyway.
    builder
        .http1()
        .writev(false)
        .max_buf_size(super::head_limit::h1_read_buffer(
            cfg.max_request_headers_bytes,
        ))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .max_header_list_size(u32::try_from(cfg.max_request_headers_bytes).unwrap_or(u32::MAX))
        .timer(hyper_util::rt::TokioTimer::new());
    let activity = ConnActivity::default();
    let idle_timeout = cfg.idle_timeout;
    // One reference per request, not one per field of the context.
    let shared = Arc::new(Conn { cfg, ctx, down });
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let conn = shared.clone();
            let active = activity.begin();
            // Boxed: the request's future is several kilobytes, and hyper
            // moves the service future around (into its dispatcher, into an
            // HTTP/2 stream); moving a pointer is free.
            Box::pin(async move {
                let idle = conn.cfg.stream_idle_timeout;
                let resp = handle(&conn, req).await;
                Ok::<_, Infallible>(Watched::wrap(resp, idle, Some(active)))
            })
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = idle_wait(&activity, idle_timeout);
    tokio::pin!(idle);
    let mut closing = false;
    let result = std::future::poll_fn(|cx| {
        // Streams first: what they wrote, the connection then sends. Then
        // the streams the connection just accepted start at once.
        let _ = streams.poll_run(cx);
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        let _ = streams.poll_run(cx);
        if !closing && idle.as_mut().poll(cx).is_ready() {
            tracing::debug!(listener = %listener, "downstream connection idle timeout");
            conn.as_mut().graceful_shutdown();
            closing = true;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    streams.finish().await;
    result.map_err(|e| ServeError::Http(e.to_string()))
}

async fn idle_wait(activity: &ConnActivity, idle: Option<std::time::Duration>) {
    match idle {
        Some(d) => activity.idle_for(d).await,
        None => std::future::pending().await,
    }
}

fn reporter(listener: &str) -> &'static str {
    if listener.starts_with("inbound") || listener.starts_with("virtualInbound") {
        "destination"
    } else {
        "source"
    }
}

async fn handle(conn: &Conn, mut req: Request<Incoming>) -> Response<Body> {
    let Conn { cfg, ctx, down } = conn;
    let start = Instant::now();
    let (exchange, peer) = crate::metrics::peer::Exchange::on_request(
        &ctx.metrics,
        reporter(&down.listener),
        down.peer_workload.as_deref(),
        req.headers_mut(),
    );
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let mut log = RequestLog {
        listener: down.listener.clone(),
        reporter: reporter(&down.listener),
        method: req.method().clone(),
        protocol: protocol_name(req.version()),
        downstream: Some(down.peer),
        source_principal: down.identity.clone(),
        peer,
        grpc: is_grpc(req.headers()),
        ..Default::default()
    };
    log.telemetry = down
        .telemetry
        .as_ref()
        .map(|t| t.on_request(req.headers_mut(), if down.tls { "https" } else { "http" }));
    let clock = StreamClock::start();
    let routed = tokio::select! {
        r = route_request(conn, req, authority.as_deref(), &path, &clock, &mut log) => Ok(r),
        e = clock.expired(cfg.stream_idle_timeout, cfg.request_timeout) => Err(e),
    };
    // Moved in only now: routing borrows them, and nothing reads them from
    // the log before the response.
    log.authority = authority.unwrap_or_default();
    log.path = path;
    let mut resp = routed.unwrap_or_else(|e| timed_out(e, &mut log));
    if let Some(t) = log.telemetry.as_mut() {
        t.on_response(resp.headers());
    }
    if let Some(callee) = exchange.on_response(&ctx.metrics, resp.headers_mut()) {
        log.peer = Some(callee);
    } else if log.reporter == "source" && log.peer.is_none() {
        log.peer = crate::proxy::connection::upstream_workload_of(ctx, &log);
    }
    log.status = resp.status().as_u16();
    Logged::wrap(resp, log, start, ctx.metrics.clone())
}

async fn route_request(
    conn: &Conn,
    mut req: Request<Incoming>,
    authority: Option<&str>,
    path: &str,
    clock: &StreamClock,
    log: &mut RequestLog,
) -> Response<Body> {
    let Conn { cfg, ctx, down } = conn;
    if super::head_limit::exceeded(&req, cfg.max_request_headers_bytes) {
        // Envoy's HTTP/1 codec error: 431, and the connection closes.
        log.flags.add("DPE");
        let mut r = local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
            &log.flags,
        );
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return r;
    }
    let Some(authority) = authority else {
        log.flags.add("DPE");
        return local(
            StatusCode::BAD_REQUEST,
            "missing Host / :authority\n",
            &log.flags,
        );
    };
    // jwt_authn runs first so RBAC sees the verified token (crate::authn).
    if let Some(jwt) = &cfg.jwt {
        let scheme = if down.tls { "https" } else { "http" };
        if let Err(reply) = crate::authn::jwt::authenticate(jwt, &mut req, authority, scheme) {
            return *reply;
        }
    }
    if let Some(denied) =
        crate::rbac::check_request(&cfg.rbac, down, &req, authority, path, &ctx.metrics, log)
    {
        return denied;
    }
    let table: Option<Arc<RouteTable>> = match &cfg.routes {
        RouteSource::Inline(t) => Some(t.clone()),
        RouteSource::Rds(name) => ctx.routes.borrow().get(name).cloned(),
    };
    let Some(table) = table else {
        log.flags.add("NR");
        return local(
            StatusCode::NOT_FOUND,
            "route configuration not received yet\n",
            &log.flags,
        );
    };
    let scheme = if down.tls { "https" } else { "http" };
    let draw = rand::rng().random::<f64>();
    let meta = RequestMeta {
        method: req.method(),
        authority,
        path_and_query: path,
        scheme,
        headers: req.headers(),
    };
    let decision = decide(&table, &meta, draw);
    let (vhost, route) = match &decision {
        Decision::NoRoute => {
            log.flags.add("NR");
            return local(StatusCode::NOT_FOUND, "no route\n", &log.flags);
        }
        Decision::TlsRedirect { location } => {
            let mut r = Response::new(super::empty());
            *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
            if let Ok(v) = http::HeaderValue::from_str(location) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            return r;
        }
        Decision::Forward { vhost, route, .. }
        | Decision::Redirect { vhost, route, .. }
        | Decision::Direct { vhost, route, .. } => (*vhost, *route),
    };
    log.route = Some(route.name.clone());
    let rate_headers = match crate::authn::ratelimit::admit_route(
        cfg.ratelimit.as_deref(),
        vhost,
        route,
        &mut req,
    ) {
        Ok(h) => h,
        Err(reply) => {
            log.flags.add("RL");
            return *reply;
        }
    };
    // Fault filter: per-route config, else virtual host, else the filter's own.
    if let Some(defaults) = &cfg.fault {
        let fault: &FaultConfig = route
            .fault
            .as_ref()
            .or(vhost.fault.as_ref())
            .unwrap_or(defaults);
        if let Some(resp) = run_fault(fault, &req, log).await {
            return resp;
        }
    }
    let levels_resp = [&route.headers, &vhost.headers, &table.headers];
    let mut resp = match decision {
        Decision::NoRoute | Decision::TlsRedirect { .. } => unreachable_no_route(log),
        Decision::Direct { status, body, .. } => {
            let mut r = Response::new(full(body.unwrap_or("").to_string()));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            apply_ops(r.headers_mut(), levels_resp, false);
            r
        }
        Decision::Redirect {
            status, location, ..
        } => {
            let mut r = Response::new(super::empty());
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            apply_ops(r.headers_mut(), levels_resp, false);
            r
        }
        Decision::Forward {
            action,
            target,
            cluster,
            path: new_path,
            ..
        } => {
            let target_ops = match &action.clusters {
                crate::config::ClusterChoice::Weighted(w) => w.get(target).map(|t| &t.headers),
                crate::config::ClusterChoice::Single(_) => None,
            };
            let f = Forwarding {
                action,
                cluster,
                authority,
                path: new_path.as_deref().unwrap_or(path),
                scheme,
                header_levels: target_ops
                    .into_iter()
                    .chain([&route.headers, &vhost.headers, &table.headers])
                    .collect(),
                retry: action.retry.as_ref().or(vhost.retry.as_ref()),
                peer: down.peer,
                original_dst: down.original_dst,
                clock,
            };
            forward(ctx, f, req, log).await
        }
    };
    if let Some(h) = rate_headers {
        h.apply(resp.headers_mut());
    }
    resp
}

/// `decide` returned NoRoute or TlsRedirect earlier and the function
/// returned then; kept total without a panic.
fn unreachable_no_route(log: &mut RequestLog) -> Response<Body> {
    log.flags.add("NR");
    local(StatusCode::NOT_FOUND, "no route\n", &log.flags)
}

fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000 || rand::rng().random_range(0..1_000_000) < per_million
}

async fn run_fault(
    f: &FaultConfig,
    req: &Request<Incoming>,
    log: &mut RequestLog,
) -> Option<Response<Body>> {
    if let Some((d, pct)) = f.delay {
        if roll(pct) {
            log.flags.add("DI");
            tokio::time::sleep(d).await;
        }
    }
    let (with, pct) = f.abort?;
    if !roll(pct) {
        return None;
    }
    log.flags.add("FI");
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    Some(match with {
        AbortWith::Http(s) if grpc => grpc_status(http_to_grpc(s), "fault filter abort"),
        AbortWith::Http(s) => local(
            StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "fault filter abort",
            &log.flags,
        ),
        AbortWith::Grpc(c) => grpc_status(c, "fault filter abort"),
    })
}

/// Envoy's local replies for a stream that timed out before its response
/// started (the upstream request, if any, was dropped with the future).
fn timed_out(e: Expired, log: &mut RequestLog) -> Response<Body> {
    let msg = match e {
        Expired::Request => "request timeout",
        Expired::StreamIdle => {
            log.flags.add("SI");
            "stream timeout"
        }
    };
    if log.grpc {
        return grpc_status(http_to_grpc(408), msg);
    }
    local(StatusCode::REQUEST_TIMEOUT, msg, &log.flags)
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// gRPC's HTTP→status mapping for aborts on gRPC requests.
fn http_to_grpc(s: u16) -> u32 {
    match s {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}
