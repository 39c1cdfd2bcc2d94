//! Access logs: an HTTP request's JSON line on the client-side gateway and
//! Envoy text line on the server-side one, and a TCP proxy's JSON line per
//! connection.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::util::pack_any;

use crate::config::{file_log, json_format, text_format};
use crate::harness::chain;
use crate::otlp::Collector;
use crate::support::ads::ScriptedAds;
use crate::support::http::{client, get};
use crate::support::resources::*;
use crate::support::*;

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
