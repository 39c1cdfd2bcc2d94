//! `isthmus status` and `isthmus proxy-config` against a real control
//! plane (one cluster, a one-member federation): an ADS client that NACKs
//! shows up as NACKED with its message, what it was sent is dumped, and
//! mistakes (unknown proxy, unreachable admin port) fail with a message
//! that says what to check.

#[path = "peers/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;

const NODE: &str = "sidecar~10.1.0.7~ratings-1.default~default.svc.cluster.local";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

const RATINGS: &str = r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings
  namespace: default
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: ratings
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ratings-1
  namespace: default
spec:
  address: 10.1.0.7
  labels:
    app: ratings
  serviceAccount: ratings
"#;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the CLI off the runtime's worker threads.
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args)
    })
    .await
    .expect("CLI thread")
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_nacks_and_proxy_config_dumps_what_was_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path());
    let a = Ports::pick("solo");
    let mut cp = ControlPlane::start(
        &a,
        &ca,
        dir.path(),
        &format!("{}{}", mesh_config(&a, &[&a]), RATINGS),
    );
    let admin = a.admin_url();
    tokio::task::block_in_place(|| {
        cp.wait_status(
            "the one-member federation has a leader",
            Duration::from_secs(30),
            |s| s["federation"]["role"] == "leader",
        )
    });

    // A sidecar subscribes to every cluster, then rejects what it gets.
    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", a.plaintext_addr()))
            .await
            .expect("connect to the plaintext xDS port");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: NODE.into(),
            ..Default::default()
        }),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .expect("queue the first request");
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("ADS stream")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a CDS response in time")
        .expect("stream ok")
        .expect("a response");
    assert!(!first.resources.is_empty(), "the sidecar sees clusters");
    tx.send(DiscoveryRequest {
        type_url: CDS.into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cluster outbound|9080||ratings: unknown field (test)".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await
    .expect("send the NACK");

    let status = tokio::task::block_in_place(|| {
        cp.wait_status("the NACK in status", Duration::from_secs(10), |s| {
            s["proxies"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["nodeId"] == NODE && p["types"]["cds"]["state"] == "nacked")
            })
        })
    });
    let proxy = status["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["nodeId"] == NODE))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        proxy["types"]["cds"]["nack"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field (test)") && m.contains(&first.version_info)),
        "{proxy}"
    );
    assert_eq!(status["registry"]["clusters"][0]["id"], "solo", "{status}");
    assert_eq!(
        status["registry"]["clusters"][0]["lease"], "active",
        "{status}"
    );

    let text = cli(args(&["status", "--admin", &admin])).await;
    assert!(text.status.success(), "{}", stderr(&text));
    let text = stdout(&text);
    assert!(text.contains("Cluster solo: config version"), "{text}");
    assert!(
        text.contains("Federation: node") && text.contains("is leader"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(NODE))
        .unwrap_or_default();
    assert!(row.contains("NACKED"), "{text}");
    assert!(
        text.contains(&format!("{NODE} CDS: NACK: version {}", first.version_info)),
        "{text}"
    );

    // What it was sent (and rejected): the outbound and inbound clusters.
    let dump = cli(args(&[
        "proxy-config",
        NODE,
        "clusters",
        "--admin",
        &admin,
        "-o",
        "json",
    ]))
    .await;
    assert!(dump.status.success(), "{}", stderr(&dump));
    let dump: Value = serde_json::from_slice(&dump.stdout).expect("JSON");
    let names: Vec<&str> = dump
        .as_array()
        .map(|d| d.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"outbound|9080||ratings.default.svc.cluster.local"),
        "{names:?}"
    );
    assert!(names.contains(&"inbound|9080||"), "{names:?}");
    assert!(
        dump.as_array()
            .is_some_and(|d| d.iter().all(|r| r["acked"] == false)),
        "{dump}"
    );
    let table = cli(args(&["proxy-config", NODE, "clusters", "--admin", &admin])).await;
    let table = stdout(&table);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("EDS tls"),
        "outbound mesh clusters use mTLS: {table}"
    );

    // Mistakes say what to check, with a non-zero exit.
    let unknown = cli(args(&[
        "proxy-config",
        "sidecar~1.2.3.4~nobody.x~x.svc.cluster.local",
        "routes",
        "--admin",
        &admin,
    ]))
    .await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("isthmus status"),
        "{}",
        stderr(&unknown)
    );
    let down = cli(args(&[
        "status",
        "--admin",
        &format!("http://127.0.0.1:{}", free_tcp()),
    ]))
    .await;
    assert!(!down.status.success());
    assert!(
        stderr(&down).contains("cannot reach the control plane's admin port"),
        "{}",
        stderr(&down)
    );

    drop(tx);
    drop(responses);
    // The stream is gone: the proxy leaves the status.
    tokio::task::block_in_place(|| {
        cp.wait_status("the proxy gone from status", Duration::from_secs(10), |s| {
            s["proxies"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["nodeId"] != NODE))
        })
    });
}
