//! Tracing and access logs through real gateways: a client-side gateway
//! (outbound listener, client spans) in front of a server-side one
//! (`inbound|…` listener, server spans) in front of an app that records the
//! headers it got, with spans exported over OTLP/gRPC to a receiver in the
//! test and access logs written to files.

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, grpc_service, substitution_format_string, DataSource, GrpcService,
    SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::trace::v3::{tracing, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier, Tracing},
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::util::pack_any;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_gateway::{Gateway, GatewayConfig};
use otlp::{hex, Collector};
use support::ads::ScriptedAds;
use support::http::{client, get, prefix_route, route_config, to_cluster};
use support::resources::*;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An app that answers 200 and remembers each request's headers, by `x-req`.
struct App {
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

    fn header(&self, req: &str, name: &str) -> Option<String> {
        self.seen
            .lock()
            .expect("app lock")
            .get(req)
            .and_then(|h| h.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

fn tracing_cfg(percent: f64, collector: SocketAddr) -> Tracing {
    Tracing {
        random_sampling: Some(Percent { value: percent }),
        provider: Some(tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(
                OpenTelemetryConfig {
                    grpc_service: Some(GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::GoogleGrpc(
                            grpc_service::GoogleGrpc {
                                target_uri: collector.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))),
        }),
        ..Default::default()
    }
}

fn file_log(path: &Path, format: substitution_format_string::Format) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            FileAccessLog {
                path: path.display().to_string(),
                access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                    SubstitutionFormatString {
                        format: Some(format),
                        ..Default::default()
                    },
                )),
            },
        ))),
    }
}

fn json_format(keys: &[(&str, &str)]) -> substitution_format_string::Format {
    substitution_format_string::Format::JsonFormat(Struct {
        fields: keys
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    })
}

fn text_format(f: &str) -> substitution_format_string::Format {
    substitution_format_string::Format::TextFormatSource(DataSource {
        specifier: Some(data_source::Specifier::InlineString(f.into())),
        ..Default::default()
    })
}

fn http_listener(
    name: &str,
    cluster: &str,
    tracing: Option<Tracing>,
    logs: Vec<AccessLog>,
) -> Listener {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config(
            "r",
            &["*"],
            vec![prefix_route("all", "/", to_cluster(cluster))],
        ))),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        tracing,
        access_log: logs,
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(addr(any_port())),
        filter_chains: vec![FilterChain {
            name: format!("{name}-http"),
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
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
struct Chain {
    app: App,
    a_ads: ScriptedAds,
    _b_ads: ScriptedAds,
    a: Gateway,
    b: Gateway,
    entry: SocketAddr,
}

async fn chain(
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

fn of_trace(spans: &[otlp::Received], trace: &str) -> Vec<otlp::Received> {
    spans
        .iter()
        .filter(|s| hex(&s.span.trace_id) == trace)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_make_one_trace_and_the_app_continues_it() {
    let collector = Collector::start().await;
    let c = chain(100.0, collector.addr, vec![], vec![]).await;
    let http = client();
    let (status, _, body) = get(
        &http,
        c.entry,
        "reviews:9080",
        "/reviews/1?u=x",
        &[("x-req", "fresh")],
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "hello"));

    // The app got B's span as its parent, in W3C and (as nobody chose a
    // style) B3 form.
    let tp = c
        .app
        .header("fresh", "traceparent")
        .expect("traceparent reached the app");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[3], "01", "sampled");
    let trace = parts[1].to_string();
    assert_eq!(
        c.app.header("fresh", "x-b3-traceid").as_deref(),
        Some(trace.as_str())
    );

    let spans = collector
        .wait_for("both hops", WAIT, |s| of_trace(s, &trace).len() >= 2)
        .await;
    let spans = of_trace(&spans, &trace);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let a = spans
        .iter()
        .find(|s| s.attr("isthmus.cluster").as_deref() == Some("cluster-a"))
        .expect("span from cluster-a");
    let b = spans
        .iter()
        .find(|s| s.attr("isthmus.cluster").as_deref() == Some("cluster-b"))
        .expect("span from cluster-b");
    assert!(a.span.parent_span_id.is_empty(), "A started the trace");
    assert_eq!(b.span.parent_span_id, a.span.span_id, "B is A's child");
    assert_eq!(hex(&b.span.span_id), parts[2], "the app's parent is B");
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    assert_eq!(a.span.kind, SpanKind::Client as i32);
    assert_eq!(b.span.kind, SpanKind::Server as i32);
    assert_eq!(a.service, "productpage.default");
    assert_eq!(b.service, "reviews.default");
    for s in [a, b] {
        assert_eq!(s.attr("http.method").as_deref(), Some("GET"));
        assert_eq!(s.attr("http.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("component").as_deref(), Some("proxy"));
        assert_eq!(s.attr("istio.namespace").as_deref(), Some("default"));
        assert_eq!(
            s.attr("http.url").as_deref(),
            Some("http://reviews:9080/reviews/1"),
            "query strings stay out of spans"
        );
        assert!(s.attr("node_id").is_some_and(|n| n.starts_with("sidecar~")));
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    }
    assert_eq!(
        a.attr("upstream_cluster").as_deref(),
        Some("outbound|9080||reviews.default.svc.cluster.local")
    );
    assert_eq!(
        a.attr("istio.canonical_service").as_deref(),
        Some("productpage")
    );
    drop((c.a, c.b, c.a_ads));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_w3c_b3_malformed_and_zero_sampling() {
    let collector = Collector::start().await;
    // 0%: only callers that decided to sample produce spans.
    let c = chain(0.0, collector.addr, vec![], vec![]).await;
    let http = client();

    // 1. Not sampled by the caller: propagated, no spans.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[("x-req", "unsampled"), ("traceparent", unsampled)],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    let tp = c
        .app
        .header("unsampled", "traceparent")
        .expect("propagated");
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(tp.ends_with("-00"), "the caller's decision is kept: {tp}");
    assert!(
        !tp.contains("b7ad6b7169203331"),
        "a new parent per hop: {tp}"
    );
    assert!(
        c.app.header("unsampled", "x-b3-traceid").is_none(),
        "W3C in, W3C out"
    );

    // 2. A sampled W3C caller: continued, with tracestate, despite 0%.
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[
            ("x-req", "w3c"),
            ("traceparent", sampled),
            ("tracestate", "vendor=x"),
        ],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(
        c.app.header("w3c", "tracestate").as_deref(),
        Some("vendor=x")
    );
    let spans = collector
        .wait_for("the W3C trace", WAIT, |s| {
            of_trace(s, "4bf92f3577b34da6a3ce929d0e0e4736").len() >= 2
        })
        .await;
    let w3c = of_trace(&spans, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        w3c.iter()
            .any(|s| hex(&s.span.parent_span_id) == "00f067aa0ba902b7"),
        "A's span is the caller's child: {w3c:#?}"
    );
    // Spans are exported in order: the unsampled request's would be here by now.
    assert!(
        of_trace(&spans, "0af7651916cd43dd8448eb211c80319c").is_empty(),
        "unsampled requests produce no spans"
    );

    // 3. B3 multi-header in → B3 out (64-bit trace id kept 64-bit), spans exported.
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[
            ("x-req", "b3"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(
        c.app.header("b3", "x-b3-traceid").as_deref(),
        Some("463ac35c9f6413ad")
    );
    assert_eq!(c.app.header("b3", "x-b3-sampled").as_deref(), Some("1"));
    let b3_parent = c
        .app
        .header("b3", "x-b3-parentspanid")
        .expect("parent span id");
    let spans = collector
        .wait_for("the B3 trace", WAIT, |s| {
            of_trace(s, "0000000000000000463ac35c9f6413ad").len() >= 2
        })
        .await;
    let b3 = of_trace(&spans, "0000000000000000463ac35c9f6413ad");
    assert!(b3
        .iter()
        .any(|s| hex(&s.span.parent_span_id) == "a2fb4a1d1a96d312"));
    assert!(
        b3.iter().any(|s| hex(&s.span.span_id) == b3_parent),
        "the app's B3 parent is B's span"
    );

    // 4. Single-header b3 in → b3 out.
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews",
        "/",
        &[
            ("x-req", "b3single"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
        ],
    )
    .await;
    assert_eq!(s.as_u16(), 200);
    let single = c.app.header("b3single", "b3").expect("b3 propagated");
    assert!(
        single.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"),
        "{single}"
    );
    assert!(
        single.contains("-0-"),
        "not sampled, as the caller said: {single}"
    );

    // 5. Malformed: ignored, a new (here unsampled) trace, never an error.
    for (i, bad) in [
        "garbage",
        "00-zz-yy-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ]
    .iter()
    .enumerate()
    {
        let key = format!("bad{i}");
        let (s, _, _) = get(
            &http,
            c.entry,
            "reviews",
            "/",
            &[("x-req", key.as_str()), ("traceparent", bad)],
        )
        .await;
        assert_eq!(s.as_u16(), 200, "{bad}");
        let tp = c
            .app
            .header(&key, "traceparent")
            .expect("a fresh traceparent");
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(!tp.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{tp}");
    }
    drop((c.a, c.b, c.a_ads));
}

async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has {} lines, expected {n}: {text}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_access_logs_in_json_and_envoy_text() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (json_a, text_b) = (dir.path().join("a.json"), dir.path().join("b.log"));
    let default_json: Vec<(&str, &str)> = isthmus_gateway::accesslog::DEFAULT_JSON_FORMAT.to_vec();
    let c = chain(
        100.0,
        collector.addr,
        vec![file_log(&json_a, json_format(&default_json))],
        vec![file_log(
            &text_b,
            text_format(isthmus_gateway::accesslog::DEFAULT_TEXT_FORMAT),
        )],
    )
    .await;
    let http = client();
    let (s, _, _) = get(
        &http,
        c.entry,
        "reviews:9080",
        "/reviews/7",
        &[
            ("x-req", "log"),
            ("user-agent", "tracing-test"),
            ("x-request-id", "rid-42"),
        ],
    )
    .await;
    assert_eq!(s.as_u16(), 200);

    let line = wait_lines(&json_a, 1).await.remove(0);
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/reviews/7");
    assert_eq!(v["authority"], "reviews:9080");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["response_code"], 200);
    assert_eq!(v["response_flags"], "-");
    assert_eq!(v["response_code_details"], "via_upstream");
    assert_eq!(v["bytes_sent"], 5);
    assert!(v["duration"].is_u64(), "{v}");
    assert_eq!(v["user_agent"], "tracing-test");
    assert_eq!(v["request_id"], "rid-42");
    assert_eq!(
        v["upstream_cluster"],
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    let b_at = c.b.listener_address("inbound_9080").expect("B bound");
    assert_eq!(v["upstream_host"], b_at.to_string());
    assert_eq!(v["reporter"], "source");
    assert_eq!(v["source_workload"], "productpage-v1");
    assert_eq!(
        v["destination_service"],
        "reviews.default.svc.cluster.local"
    );
    assert_eq!(v["cluster"], "cluster-a");
    assert_eq!(
        v["trace_id"].as_str().map(str::len),
        Some(32),
        "the line names its trace: {v}"
    );
    assert_eq!(v["requested_server_name"], serde_json::Value::Null);

    let line = wait_lines(&text_b, 1).await.remove(0);
    // [START] "GET /reviews/7 HTTP/1.1" 200 - via_upstream - "-" 0 5 D - "-" "tracing-test" "rid-42" "reviews:9080" "HOST" inbound|9080|| - LOCAL REMOTE - all
    let re = regex::Regex::new(
        r#"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /reviews/7 HTTP/1\.1" 200 - via_upstream - "-" 0 5 \d+ - "-" "tracing-test" "rid-42" "reviews:9080" "127\.0\.0\.1:\d+" inbound\|9080\|\| - 127\.0\.0\.1:\d+ 127\.0\.0\.1:\d+ - all$"#,
    )
    .expect("regex");
    assert!(re.is_match(&line), "text line: {line}");
    drop((c.a, c.b, c.a_ads));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_access_log_one_json_line_per_connection() {
    let backend = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tcp.json");
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("c", eds_cluster("c"))]);
    ads.set(EDS, vec![named("c", cla("c", &[(0, &[backend.addr])]))]);
    let tp = TcpProxy {
        stat_prefix: "c".into(),
        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
        access_log: vec![file_log(
            &path,
            json_format(isthmus_gateway::accesslog::DEFAULT_JSON_FORMAT),
        )],
        ..Default::default()
    };
    ads.set(
        LDS,
        vec![named(
            "tcp",
            Listener {
                name: "tcp".into(),
                address: Some(addr(any_port())),
                filter_chains: vec![FilterChain {
                    filters: vec![Filter {
                        name: "envoy.filters.network.tcp_proxy".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(pack_any(tp))),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let at = gw.wait_listener("tcp", WAIT).await.expect("bound");
    // Retries until the cluster is warm; each try is one connection line.
    let reply = eventually_reply(at, "ping", "app:").await;
    assert_eq!(reply, "app:ping");
    let deadline = tokio::time::Instant::now() + WAIT;
    let v = loop {
        let lines = wait_lines(&path, 1).await;
        let ok = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["bytes_sent"] == 8);
        if let Some(v) = ok {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line of the proxied connection: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["bytes_received"], 4);
    assert_eq!(v["bytes_sent"], 8);
    assert_eq!(v["upstream_host"], backend.addr.to_string());
    assert_eq!(v["upstream_cluster"], "c");
    assert_eq!(
        v["response_code"], 0,
        "TCP has no response code (Envoy logs 0)"
    );
    assert_eq!(v["method"], serde_json::Value::Null);
    assert_eq!(v["downstream_local_address"], at.to_string());
    assert_eq!(v["cluster"], "test");
    assert_eq!(v["reporter"], "source");
    assert!(v["duration"].is_u64());
    assert!(v["start_time"].as_str().is_some_and(|t| t.ends_with('Z')));
    drop(gw);
}
