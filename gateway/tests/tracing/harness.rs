//! The test harness: an app that records the headers of each request, a
//! gateway started for a workload of a given cluster, and the chain
//! client → gateway A (outbound) → gateway B (inbound) → app, both gateways
//! exporting spans to one collector.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::{http_listener, tracing_cfg};
use crate::otlp::{self, hex};
use crate::support::ads::ScriptedAds;
use crate::support::resources::*;
use crate::support::*;

/// An app that answers 200 and remembers each request's headers, by `x-req`.
pub(crate) struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, ::http::HeaderMap>>>,
    _tasks: JoinSet<()>,
}

impl App {
    async fn start() -> App {
        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = sock.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = JoinSet::new();
        let s = seen.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((io, _)) = sock.accept().await else {
                    return;
                };
                let s = s.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req: ::http::Request<_>| {
                        let s = s.clone();
                        async move {
                            let key = req
                                .headers()
                                .get("x-req")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            s.lock()
                                .expect("app lock")
                                .insert(key, req.headers().clone());
                            Ok::<_, Infallible>(::http::Response::new(Full::new(Bytes::from(
                                "hello",
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        App {
            addr,
            seen,
            _tasks: tasks,
        }
    }

    pub(crate) fn header(&self, req: &str, name: &str) -> Option<String> {
        self.seen
            .lock()
            .expect("app lock")
            .get(req)
            .and_then(|h| h.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

async fn start_gateway(ads: &ScriptedAds, cluster_id: &str, app: &str) -> Gateway {
    init();
    let mut n = node(
        &format!("sidecar~127.0.0.1~{app}-v1.default~default.svc.cluster.local"),
        "sidecar",
    );
    n.cluster = cluster_id.into();
    n.metadata
        .insert("CLUSTER_ID".into(), serde_json::json!(cluster_id));
    n.metadata
        .insert("NAMESPACE".into(), serde_json::json!("default"));
    n.metadata
        .insert("LABELS".into(), serde_json::json!({ "app": app }));
    let mut cfg = GatewayConfig::new(ads.url(), n, "127.0.0.1:0".parse().expect("addr"));
    cfg.trace_export.interval = Duration::from_millis(100);
    let gw = Gateway::start(cfg).await.expect("gateway start");
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    gw
}

/// client → gateway A (cluster-a, outbound) → gateway B (cluster-b, inbound) → app.
pub(crate) struct Chain {
    pub(crate) app: App,
    pub(crate) a_ads: ScriptedAds,
    _b_ads: ScriptedAds,
    pub(crate) a: Gateway,
    pub(crate) b: Gateway,
    pub(crate) entry: SocketAddr,
}

pub(crate) async fn chain(
    percent: f64,
    collector: SocketAddr,
    a_logs: Vec<AccessLog>,
    b_logs: Vec<AccessLog>,
) -> Chain {
    let app = App::start().await;
    let b_ads = ScriptedAds::start().await;
    const INBOUND: &str = "inbound|9080||";
    b_ads.set(CDS, vec![named(INBOUND, eds_cluster(INBOUND))]);
    b_ads.set(EDS, vec![named(INBOUND, cla(INBOUND, &[(0, &[app.addr])]))]);
    b_ads.set(
        LDS,
        vec![named(
            "inbound_9080",
            http_listener(
                "inbound_9080",
                INBOUND,
                Some(tracing_cfg(percent, collector)),
                b_logs,
            ),
        )],
    );
    let b = start_gateway(&b_ads, "cluster-b", "reviews").await;
    let b_at = b
        .wait_listener("inbound_9080", WAIT)
        .await
        .expect("B listening");

    let a_ads = ScriptedAds::start().await;
    const OUT: &str = "outbound|9080||reviews.default.svc.cluster.local";
    a_ads.set(CDS, vec![named(OUT, eds_cluster(OUT))]);
    a_ads.set(EDS, vec![named(OUT, cla(OUT, &[(0, &[b_at])]))]);
    a_ads.set(
        LDS,
        vec![named(
            "0.0.0.0_9080",
            http_listener(
                "0.0.0.0_9080",
                OUT,
                Some(tracing_cfg(percent, collector)),
                a_logs,
            ),
        )],
    );
    let a = start_gateway(&a_ads, "cluster-a", "productpage").await;
    let entry = a
        .wait_listener("0.0.0.0_9080", WAIT)
        .await
        .expect("A listening");
    Chain {
        app,
        a_ads,
        _b_ads: b_ads,
        a,
        b,
        entry,
    }
}

pub(crate) fn of_trace(spans: &[otlp::Received], trace: &str) -> Vec<otlp::Received> {
    spans
        .iter()
        .filter(|s| hex(&s.span.trace_id) == trace)
        .cloned()
        .collect()
}
