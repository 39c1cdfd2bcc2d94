//! A real Prometheus (the Debian `prometheus` package) scrapes a running
//! two-cluster federation; PromQL over its HTTP API must return Istio's
//! standard metrics for known traffic, istiod's control-plane metrics and
//! the federation's. Also: the files in `deploy/monitoring` pass `promtool`
//! and every dashboard and alert expression is valid PromQL.

mod common;
#[path = "support/prom.rs"]
mod prom;

use std::path::PathBuf;
use std::time::Duration;

use isthmus_multicluster_tests::admin::{metrics, sum};
use isthmus_multicluster_tests::load::request;
use isthmus_multicluster_tests::FederationSpec;

use prom::{require_tool, run_tool, Prometheus, Target};

const PRODUCTPAGE_ID: &str = "spiffe://demo.isthmus.local/ns/default/sa/bookinfo-productpage";
const REVIEWS_ID: &str = "spiffe://demo.isthmus.local/ns/default/sa/bookinfo-reviews";
const DEADLINE: Duration = Duration::from_secs(30);

fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// us-west's productpage calls reviews in us-east over HTTP, through
/// us-east's east-west gateway.
fn two_clusters() -> FederationSpec {
    let mut spec = FederationSpec::bookinfo();
    spec.clusters.retain(|c| c.name != "eu-central");
    for c in spec.clusters.iter_mut() {
        for s in c.services.iter_mut() {
            s.protocol = "HTTP".into();
        }
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_istio_control_plane_and_federation_metrics() {
    let Some(binary) = require_tool("prometheus") else {
        return;
    };
    let fed = common::start(two_clusters(), "us-east").await.unwrap();
    let mut targets = Vec::new();
    for c in fed.clusters() {
        targets.push(Target::new(
            c.block.control_admin(),
            c.name(),
            "isthmus-control",
        ));
        targets.push(Target::new(
            c.block.eastwest_admin(),
            c.name(),
            "isthmus-proxies",
        ));
        for k in 1..=c.spec.workloads.len() {
            let k = u8::try_from(k).unwrap();
            targets.push(Target::new(
                c.block.workload_admin(k),
                c.name(),
                "isthmus-proxies",
            ));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&binary, tmp.path(), &targets)
        .await
        .unwrap();

    // Federation: one leader, both nodes know it, both clusters leased.
    prom.wait_value("sum(isthmus_federation_is_leader)", 1.0, DEADLINE)
        .await
        .unwrap();
    prom.wait_value("count(isthmus_federation_leader_known == 1)", 2.0, DEADLINE)
        .await
        .unwrap();
    prom.wait_value("max(isthmus_federation_clusters)", 2.0, DEADLINE)
        .await
        .unwrap();
    prom.wait_value(
        "max(isthmus_federation_cluster_lease_expired)",
        0.0,
        DEADLINE,
    )
    .await
    .unwrap();

    // Control plane (istiod's names): us-east serves its east-west gateway
    // and three sidecars.
    prom.wait_value(
        r#"sum(pilot_xds{isthmus_cluster="us-east"})"#,
        4.0,
        DEADLINE,
    )
    .await
    .unwrap();
    // Its CA issued (at least) the certificates of those three sidecars.
    prom.wait_value(
        r#"sum(citadel_server_success_cert_issuance_count{isthmus_cluster="us-east"}) >= bool 3"#,
        1.0,
        DEADLINE,
    )
    .await
    .unwrap();

    // Data plane: known traffic, counted by both ends with Istio's labels.
    let west = fed.cluster("us-west").unwrap().block;
    let east = fed.cluster("us-east").unwrap();
    let callee_admins: Vec<_> = (1..=2).map(|k| east.block.workload_admin(k)).collect();
    let dest_labels = [
        ("reporter", "destination"),
        ("source_workload", "productpage-v1"),
        ("source_cluster", "us-west"),
        ("source_principal", PRODUCTPAGE_ID),
        ("destination_cluster", "us-east"),
        ("destination_service_name", "reviews"),
        ("destination_principal", REVIEWS_ID),
        ("connection_security_policy", "mutual_tls"),
        ("response_code", "200"),
    ];
    let src_labels = [
        ("reporter", "source"),
        ("source_workload", "productpage-v1"),
        ("source_cluster", "us-west"),
        ("destination_cluster", "us-east"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("destination_app", "reviews"),
        ("destination_principal", REVIEWS_ID),
        ("response_code", "200"),
    ];
    let dest_q = format!("sum(istio_requests_total{{{}}})", selector(&dest_labels));
    let src_q = format!("sum(istio_requests_total{{{}}})", selector(&src_labels));
    // The warm-up traffic of `common::start`, read from the proxies
    // themselves; Prometheus must agree before the test traffic starts.
    let mut dest_before = 0.0;
    for a in &callee_admins {
        dest_before += sum(
            &metrics(*a).await.unwrap(),
            "istio_requests_total",
            &dest_labels,
        );
    }
    let src_before = sum(
        &metrics(west.workload_admin(1)).await.unwrap(),
        "istio_requests_total",
        &src_labels,
    );
    prom.wait_value(&dest_q, dest_before, DEADLINE)
        .await
        .unwrap();
    prom.wait_value(&src_q, src_before, DEADLINE).await.unwrap();

    const N: usize = 25;
    let cfg = fed
        .load("us-west", "productpage-v1", "reviews", 1.0)
        .unwrap();
    for _ in 0..N {
        let l = request(&cfg).await.unwrap();
        assert_eq!(l.cluster, "us-east");
    }
    prom.wait_value(&dest_q, dest_before + N as f64, DEADLINE)
        .await
        .unwrap();
    prom.wait_value(&src_q, src_before + N as f64, DEADLINE)
        .await
        .unwrap();
    // The histograms count the same requests.
    let hist = format!(
        "sum(istio_request_duration_milliseconds_count{{{}}})",
        selector(&dest_labels)
    );
    prom.wait_value(&hist, dest_before + N as f64, DEADLINE)
        .await
        .unwrap();
    let sizes = format!(
        "sum(istio_response_bytes_count{{{}}})",
        selector(&src_labels)
    );
    prom.wait_value(&sizes, src_before + N as f64, DEADLINE)
        .await
        .unwrap();
    // Both ends of every call are proxies with a certificate whose expiry
    // is exported, and so are the east-west gateways (they hold one for
    // xDS over mTLS and the QUIC tunnel).
    let expiring = prom
        .value(r#"count(isthmus_gateway_cert_expiry_timestamp_seconds > time())"#)
        .await
        .unwrap();
    assert_eq!(
        expiring, 6.0,
        "productpage, three us-east sidecars and two east-west gateways"
    );

    // Every dashboard panel and alert expression parses and evaluates.
    for expr in dashboard_exprs().into_iter().chain(alert_exprs()) {
        if let Err(e) = prom.query(&expr).await {
            panic!("{expr}: {e}");
        }
    }
    drop(prom);
    fed.shutdown().await;
}

fn selector(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every `expr` of the Grafana dashboards, with Grafana's variables
/// replaced by what Grafana would send.
fn dashboard_exprs() -> Vec<String> {
    let mut out = Vec::new();
    for d in dashboards() {
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(
                        e.replace("$__rate_interval", "1m")
                            .replace("$cluster", ".*")
                            .replace("$service", ".*"),
                    );
                }
            }
        }
    }
    assert!(out.len() > 40, "dashboards hold {} queries", out.len());
    out
}

fn alert_exprs() -> Vec<String> {
    let path = monitoring_dir().join("prometheus/rules/isthmus-alerts.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().into_iter().flatten() {
        for r in g["rules"].as_sequence().into_iter().flatten() {
            out.push(r["expr"].as_str().unwrap().to_string());
        }
    }
    out
}

fn dashboards() -> Vec<serde_json::Value> {
    let dir = monitoring_dir().join("grafana");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push(v);
        }
    }
    assert_eq!(
        out.len(),
        3,
        "federation, control plane and mesh dashboards"
    );
    out
}

#[test]
fn dashboards_are_grafana_models_with_queries() {
    let mut uids = std::collections::BTreeSet::new();
    for d in dashboards() {
        let title = d["title"].as_str().unwrap_or_default().to_string();
        assert!(!title.is_empty());
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{title}: uid reused"
        );
        assert!(d["schemaVersion"].as_u64().unwrap() >= 30, "{title}");
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["type"] == "datasource"),
            "{title}: datasource variable"
        );
        let mut ids = std::collections::BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            let id = p["id"].as_u64().unwrap();
            assert!(ids.insert(id), "{title}: panel id {id} reused");
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{title}: panel {id} is wider than the grid");
            if p["type"] == "row" {
                continue;
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{title}: panel {id} has no query");
            let mut refs = std::collections::BTreeSet::new();
            for t in targets {
                assert!(!t["expr"].as_str().unwrap().is_empty());
                assert!(refs.insert(t["refId"].as_str().unwrap().to_string()));
            }
        }
    }
}

#[test]
fn deploy_monitoring_passes_promtool() {
    let Some(promtool) = require_tool("promtool") else {
        return;
    };
    let dir = monitoring_dir();
    run_tool(
        &promtool,
        &["check", "config"],
        &dir.join("prometheus/prometheus-demo.yml"),
    )
    .unwrap();
    run_tool(
        &promtool,
        &["check", "rules"],
        &dir.join("prometheus/rules/isthmus-alerts.yaml"),
    )
    .unwrap();
    run_tool(
        &promtool,
        &["test", "rules"],
        &dir.join("prometheus/rules/isthmus-alerts.test.yaml"),
    )
    .unwrap();
}

#[test]
fn prometheus_rule_matches_the_rules_file() {
    let dir = monitoring_dir();
    let read = |p: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(p)).unwrap()).unwrap()
    };
    let rules = read("prometheus/rules/isthmus-alerts.yaml");
    let crd = read("kubernetes/prometheusrule.yaml");
    assert_eq!(crd["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(
        crd["spec"], rules,
        "kubernetes/prometheusrule.yaml must carry exactly the groups of prometheus/rules/isthmus-alerts.yaml"
    );
}
