//! The control plane's admin HTTP port: `/metrics`, `/healthz`, `/readyz`
//! and the debug views operators know from istiod (`/debug/syncz` for push
//! and ACK status per proxy, `/debug/registry`, `/debug/federation`,
//! `/debug/config`), plus what `isthmus status` and `isthmus proxy-config`
//! read: `/debug/status` and `/debug/config_dump?proxy=ID&type=clusters`.
//! The federation dashboard lives under `/dashboard/` ([`dashboard`]).

pub mod dashboard;
pub mod debug_json;
pub mod views;

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
    /// `/federation/*` (membership and snapshots); see [`super::federation::admin`].
    pub federation_admin: Option<super::federation::admin::FederationAdmin>,
}

/// Serves on an already bound listener (bound by the caller, so a port
/// conflict fails start-up instead of a background task).
pub async fn serve(listener: TcpListener, state: AdminState) {
    let dashboard = dashboard::Dashboard::start(state.xds.clone(), Default::default());
    let state = Arc::new(state);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let (state, dashboard) = (state.clone(), dashboard.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (state, dashboard) = (state.clone(), dashboard.clone());
                async move {
                    if let Some(resp) = federation_route(&state, &req).await {
                        return Ok::<_, Infallible>(resp);
                    }
                    let page = match *req.method() {
                        Method::GET => dashboard::route(&state, &dashboard, req.uri().path()).await,
                        _ => None,
                    };
                    Ok::<_, Infallible>(match page {
                        Some(resp) => resp,
                        None => route(&state, req).await,
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn federation_route(
    state: &AdminState,
    req: &Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path();
    if !path.starts_with("/federation/") {
        return None;
    }
    let fed = state.federation_admin.as_ref()?;
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Some(fed.route(req.method(), path, param).await)
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
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
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
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
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/debug/syncz" => json_reply(serde_json::to_value(state.xds.status()).unwrap_or_default()),
        "/debug/federation" => match state.federation.status().await {
            Ok(s) => json_reply(serde_json::to_value(s).unwrap_or_default()),
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        "/debug/registry" => json_reply(registry_view(&state.federation)),
        "/debug/dns" => json_reply(
            serde_json::to_value(super::dns::status::view(
                &state.config.borrow().clone(),
                &state.federation.snapshot_stale(),
                &state.metrics,
            ))
            .unwrap_or_default(),
        ),
        "/debug/status" => {
            json_reply(serde_json::to_value(status_view(state).await).unwrap_or_default())
        }
        "/debug/config_dump" => config_dump(state, param("proxy"), param("type")),
        "/debug/config" => {
            let snap = state.config.borrow().clone();
            let diagnostics: Vec<String> =
                snap.diagnostics().iter().map(|d| d.to_string()).collect();
            json_reply(json!({
                "version": snap.version(),
                "resources": snap.iter().map(|(k, _)| format!("{k:?}")).collect::<Vec<_>>(),
                "diagnostics": diagnostics,
            }))
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

const FEDERATION_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything `isthmus status` shows, at one moment.
pub async fn status_view(state: &AdminState) -> views::StatusView {
    let now = std::time::SystemTime::now();
    // A wedged node loop must not hang the whole status page.
    let answer = tokio::time::timeout(FEDERATION_STATUS_TIMEOUT, state.federation.status()).await;
    let (federation, federation_error) = match answer {
        Ok(Ok(s)) => (Some(views::federation_view(&s)), None),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(_) => (
            None,
            Some(format!(
                "the federation node did not answer within {FEDERATION_STATUS_TIMEOUT:?}; check its logs"
            )),
        ),
    };
    let mut proxies: Vec<views::ProxyView> = state
        .xds
        .status()
        .iter()
        .map(|p| views::proxy_view(p, now))
        .collect();
    proxies.sort_by(|a, b| (&a.node_id, a.stream).cmp(&(&b.node_id, b.stream)));
    let config = state.config.borrow().clone();
    views::StatusView {
        cluster: config
            .mesh_config()
            .map(|m| m.spec.cluster_id.clone())
            .unwrap_or_default(),
        config: views::config_view(&config),
        registry: views::registry_view(&state.federation.snapshot_stale()),
        federation,
        federation_error,
        proxies,
    }
}

fn text_error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    reply(status, "text/plain", format!("{message}\n"))
}

fn config_dump(
    state: &AdminState,
    proxy: Option<&str>,
    kind: Option<&str>,
) -> Response<Full<Bytes>> {
    let Some(proxy) = proxy.filter(|p| !p.is_empty()) else {
        return text_error(
            StatusCode::BAD_REQUEST,
            "config_dump needs ?proxy=NODE_ID (see /debug/status for connected proxies)".into(),
        );
    };
    let kind = kind.unwrap_or("clusters");
    let Some(t) = views::parse_type(kind) else {
        return text_error(
            StatusCode::BAD_REQUEST,
            format!("config_dump type {kind:?} is not one of clusters, endpoints, listeners, routes, secrets"),
        );
    };
    match views::config_dump(&state.xds.status(), proxy, t) {
        Some(resources) => json_reply(serde_json::to_value(resources).unwrap_or_default()),
        None => text_error(
            StatusCode::NOT_FOUND,
            format!("no proxy with node id {proxy:?} is connected to this control plane; `isthmus status` lists the connected ones"),
        ),
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
