//! The control plane's admin HTTP port: `/metrics`, `/healthz`, `/readyz`
//! and the debug views operators know from istiod (`/debug/syncz` for push
//! and ACK status per proxy, `/debug/registry`, `/debug/federation`,
//! `/debug/config`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use isthmus_federation::Handle;
use isthmus_xds::XdsServer;
use prometheus::{Encoder, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::ConfigSnapshot;

/// What the admin port reads. Everything is a cheap clone or a watch.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: prometheus::Registry,
    /// Ready once the first configuration is loaded and xDS is serving.
    pub ready: watch::Receiver<bool>,
    pub xds: XdsServer,
    pub federation: Handle,
    pub config: watch::Receiver<Arc<ConfigSnapshot>>,
}

/// Serves on an already bound listener (bound by the caller, so a port
/// conflict fails start-up instead of a background task).
pub async fn serve(listener: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

fn json_reply(value: serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    reply(StatusCode::OK, "application/json", body)
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if *state.ready.borrow() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/metrics" => {
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&state.metrics.gather(), &mut buf) {
                Ok(()) => reply(StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        "/debug/syncz" => json_reply(serde_json::to_value(state.xds.status()).unwrap_or_default()),
        "/debug/federation" => match state.federation.status().await {
            Ok(s) => json_reply(serde_json::to_value(s).unwrap_or_default()),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{e}\n")),
        },
        "/debug/registry" => json_reply(registry_view(&state.federation)),
        "/debug/config" => {
            let snap = state.config.borrow().clone();
            let diagnostics: Vec<String> = snap.diagnostics().iter().map(|d| d.to_string()).collect();
            json_reply(json!({
                "version": snap.version(),
                "resources": snap.iter().map(|(k, _)| format!("{k:?}")).collect::<Vec<_>>(),
                "diagnostics": diagnostics,
            }))
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// The local replica's view, keyed by strings so it renders as JSON.
pub fn registry_view(federation: &Handle) -> serde_json::Value {
    let snap = federation.snapshot_stale();
    let services: serde_json::Map<String, serde_json::Value> = snap
        .services
        .iter()
        .map(|(cluster, svcs)| {
            let per: serde_json::Map<String, serde_json::Value> = svcs
                .iter()
                .map(|(k, cs)| {
                    (
                        format!("{}/{}", k.namespace, k.name),
                        serde_json::to_value(cs).unwrap_or_default(),
                    )
                })
                .collect();
            (cluster.clone(), serde_json::Value::Object(per))
        })
        .collect();
    json!({
        "revision": snap.revision,
        "appliedIndex": snap.applied_index,
        "clusters": serde_json::to_value(&snap.clusters).unwrap_or_default(),
        "leases": snap
            .leases
            .iter()
            .map(|(c, l)| (c.clone(), json!(format!("{l:?}"))))
            .collect::<serde_json::Map<_, _>>(),
        "services": services,
    })
}
