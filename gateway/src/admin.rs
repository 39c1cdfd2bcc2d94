//! Admin HTTP server (hyper 1): `/metrics`, `/healthz`, `/readyz`,
//! `/config_dump`. Runs as its own tasks so scrapes never sit on the
//! connection path.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::state::{ClusterTable, ResourceSet};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin server cannot bind {0}: {1} (is another proxy using the admin port?)")]
    Bind(SocketAddr, std::io::Error),
}

/// What the admin endpoints read; all of it through `watch` receivers.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<bool>,
    pub resources: watch::Receiver<Arc<ResourceSet>>,
    pub clusters: watch::Receiver<Arc<ClusterTable>>,
    pub bound: watch::Receiver<BTreeMap<String, SocketAddr>>,
}

/// Binds the admin address; the returned future serves until `stop`.
pub async fn bind(
    addr: SocketAddr,
    state: AdminState,
    stop: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), AdminError> {
    let sock = TcpListener::bind(addr)
        .await
        .map_err(|e| AdminError::Bind(addr, e))?;
    let local = sock.local_addr().map_err(|e| AdminError::Bind(addr, e))?;
    Ok((local, serve(sock, state, stop)))
}

async fn serve(sock: TcpListener, state: AdminState, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = sock.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", "text/plain");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" => {
            if *state.ready.borrow() {
                text(StatusCode::OK, "ready\n", "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting for the first complete configuration from the control plane\n",
                    "text/plain",
                )
            }
        }
        "/metrics" => match state.metrics.encode() {
            Ok(body) => text(StatusCode::OK, body, "text/plain; version=0.0.4"),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                "text/plain",
            ),
        },
        "/config_dump" => {
            let body = config_dump(state);
            text(StatusCode::OK, body, "application/json")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /metrics /healthz /readyz /config_dump\n",
            "text/plain",
        ),
    }
}

fn config_dump(state: &AdminState) -> String {
    let resources = state.resources.borrow().clone();
    let clusters = state.clusters.borrow().clone();
    let bound = state.bound.borrow().clone();
    let mut cl = serde_json::Map::new();
    for (name, c) in &clusters.clusters {
        cl.insert(
            name.clone(),
            serde_json::json!({
                "warm": c.warm,
                "tls_ready": c.tls.as_ref().map(|t| t.is_ok()),
                "tls_error": c.tls.as_ref().and_then(|t| t.as_ref().err().cloned()),
                "priority_load_percent": c.lb.priority_load(),
                "hosts": c.lb.snapshot(),
            }),
        );
    }
    let dump = serde_json::json!({
        "ready": *state.ready.borrow(),
        "resources": &*resources,
        "listeners_bound": bound,
        "clusters": cl,
    });
    serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
