//! HTTP pieces for the tests: a real hyper backend (HTTP/1.1 and h2c) with
//! scripted behaviours, an HTTP client, and Envoy HTTP resources.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ConfigSource,
};
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue as PbHeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use envoy_types::util::pack_any;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::resources::addr;

pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A hyper server answering with its id. Behaviour by request:
/// - header `x-status: N` → status N;
/// - path `/hold` → waits 1 s before answering;
/// - `content-type: application/grpc` → streams the request body back, then
///   trailers `grpc-status: 0`;
/// - `upgrade: websocket` → 101 and an echo of the upgraded bytes.
///
/// Every response carries `x-backend: <id>` and `x-seen-path` / `x-seen-host`.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    tasks: JoinSet<()>,
}

impl HttpBackend {
    pub async fn start(id: &str) -> Self {
        Self::start_with(id, None).await
    }

    /// A backend answering every request with `status`.
    pub async fn failing(id: &str, status: u16) -> Self {
        Self::start_with(id, Some(status)).await
    }

    async fn start_with(id: &str, fail: Option<u16>) -> Self {
        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let (id, h) = (id.to_string(), hits.clone());
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((s, _)) = sock.accept().await else {
                    return;
                };
                let (id, h) = (id.clone(), h.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (id, h) = (id.clone(), h.clone());
                        async move { Ok::<_, Infallible>(answer(&id, &h, fail, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(s), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, hits, tasks }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection.
    pub async fn kill(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn answer(
    id: &str,
    hits: &AtomicU64,
    fail: Option<u16>,
    mut req: Request<Incoming>,
) -> Response<BoxBody> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let status = req
        .headers()
        .get("x-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .or(fail)
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut builder = Response::builder()
        .status(status)
        .header("x-backend", id)
        .header(
            "x-seen-path",
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        )
        .header("x-seen-host", host);
    if let Some(v) = req.headers().get("x-added") {
        builder = builder.header("x-seen-added", v.clone());
    }
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return builder
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed_unsync())
            .expect("response");
    }
    let delay_ms = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay_ms.or((path == "/hold").then_some(1000)) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if grpc {
        // Echo each request frame as it arrives, then OK trailers.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    if tx.send(Ok(Frame::data(d))).await.is_err() {
                        return;
                    }
                }
            }
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        return builder
            .header("content-type", "application/grpc")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("response");
    }
    let _ = req.into_body().collect().await;
    builder
        .body(Full::new(Bytes::from(id.to_string())).boxed_unsync())
        .expect("response")
}

/// A pooled HTTP/1.1 client.
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET `http://{at}{path}` with `Host: host` and extra headers; (status, headers, body).
pub async fn get(
    c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    at: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut b = Request::builder()
        .uri(format!("http://{at}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("HTTP request through the gateway");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An h2c connection to `at` with prior knowledge (no Upgrade), as a gRPC
/// client opens one: its sender, and the task driving it.
pub async fn h2c_connect<B>(
    at: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(at).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    (send, tokio::spawn(conn))
}

/// GET `http://{host}{path}` sent to `at` over h2c with prior knowledge
/// (no Upgrade); (status, headers, body).
pub async fn h2c_get(
    at: SocketAddr,
    host: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let (mut send, driver) = h2c_connect(at).await;
    let req = Request::builder()
        .uri(format!("http://{host}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(super::WAIT, send.send_request(req))
        .await
        .expect("h2c answer in time")
        .expect("h2c request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    driver.abort();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn http_filter(name: &str, any: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

/// The HCM as the control plane emits it: fault filter, router last.
pub fn hcm(routes: RouteSpecifier) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(
            HttpConnectionManager {
                codec_type: CodecType::Auto as i32,
                stat_prefix: "test".into(),
                route_specifier: Some(routes),
                http_filters: vec![
                    http_filter("envoy.filters.http.fault", pack_any(HttpFault::default())),
                    http_filter("envoy.filters.http.router", pack_any(Router::default())),
                ],
                ..Default::default()
            },
        ))),
    }
}

pub fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: name.into(),
    })
}

pub fn http_listener(name: &str, at: SocketAddr, routes: RouteSpecifier) -> Listener {
    Listener {
        name: name.into(),
        address: Some(addr(at)),
        filter_chains: vec![FilterChain {
            name: format!("{name}-http"),
            filters: vec![hcm(routes)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn prefix_route(name: &str, prefix: &str, action: RouteAction) -> Route {
    Route {
        name: name.into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        ..Default::default()
    }
}

pub fn to_cluster(c: &str) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    }
}

pub fn route_config(name: &str, domains: &[&str], routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// RDS resource `name`: one virtual host for every authority with `routes`.
pub fn any_host_routes(
    name: &str,
    routes: Vec<Route>,
) -> (String, envoy_types::pb::google::protobuf::Any) {
    super::resources::named(name, route_config(name, &["*"], routes))
}

pub fn set_header(k: &str, v: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The cluster speaks HTTP/2 upstream (`HttpProtocolOptions`).
pub fn with_h2(mut c: Cluster) -> Cluster {
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        }),
    );
    c
}
