//! Conformance with gRPC's own xDS client (Python grpcio): two clusters on
//! one network, federated over QUIC by their real control planes. The
//! service lives only in cluster B (its endpoint a grpcio server started
//! here); a proxyless gRPC client configured by cluster A's control plane
//! dials `xds:///reviews.default.svc.cluster.local:9080`, so every call
//! that succeeds went LDS → RDS → CDS → EDS through Isthmus and landed on
//! the remote endpoint. Afterwards `isthmus status` and `isthmus
//! proxy-config` must show that client, in sync.

#[path = "peers/cluster.rs"]
mod cluster;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use cluster::*;
use serde_json::Value;

const TARGET: &str = "xds:///reviews.default.svc.cluster.local:9080";
const CLIENT_NODE: &str = "sidecar~127.0.0.1~grpc-client.default~default.svc.cluster.local";

fn reviews_in_b(server_ports: &[u16]) -> String {
    let workloads: String = server_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-b-{i}
  namespace: default
spec:
  address: 127.0.0.1
  ports:
    grpc: {port}
  labels:
    app: reviews
    version: v1
  serviceAccount: reviews
"#
            )
        })
        .collect();
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9080
    name: grpc
    protocol: GRPC
  workloadSelector:
    labels:
      app: reviews
{workloads}"#
    )
}

/// Cluster A's registry replica holds B's export of reviews, with an endpoint.
fn a_sees_reviews(s: &Value) -> bool {
    s["registry"]["clusters"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c["id"] == "b" && c["endpoints"].as_u64().unwrap_or(0) > 0 && c["lease"] == "active"
        })
    })
}

#[test]
fn grpc_xds_client_calls_a_service_in_the_other_cluster() {
    require_grpcio();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new(dir.path());
    let (a, b) = (Ports::pick("a"), Ports::pick("b"));
    let (_server, server_port) = grpc_server("reviews-b", dir.path());

    let mut cp_a = ControlPlane::start(&a, &ca, dir.path(), &mesh_config(&a, &[&a, &b]));
    let mut cp_b = ControlPlane::start(
        &b,
        &ca,
        dir.path(),
        &format!(
            "{}{}",
            mesh_config(&b, &[&a, &b]),
            reviews_in_b(&[server_port])
        ),
    );
    cp_b.wait_status("a federation leader", Duration::from_secs(30), |s| {
        s["federation"]["leader"].as_u64().unwrap_or(0) != 0
    });
    cp_a.wait_status(
        "B's reviews replicated to A",
        Duration::from_secs(30),
        a_sees_reviews,
    );

    let mut cmd = Command::new("python3");
    cmd.arg(peer_script())
        .args(["client", TARGET, "10", "60"])
        .env(
            "GRPC_XDS_BOOTSTRAP_CONFIG",
            grpc_bootstrap(a.plaintext_addr(), CLIENT_NODE, "a"),
        )
        .stdout(Stdio::piped());
    let mut client = Proc::spawn("grpc-client", cmd, dir.path());
    let mut stdout = client.take_stdout();
    // The client bounds each call at 20 s; this read ends when it reports
    // or exits (EOF), and the guard kills it in any case.
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("read the client's report");
    let report: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
        panic!(
            "the gRPC client gave no report ({e}): {line:?}\nclient stderr:\n{}\ncontrol plane A status:\n{}",
            client.log_tail(),
            cp_a.status().map(|s| s.to_string()).unwrap_or_default()
        )
    });
    assert_eq!(
        report["ok"],
        10,
        "every call succeeds: {report}\nclient stderr:\n{}\nA: {}",
        client.log_tail(),
        cp_a.status().map(|s| s.to_string()).unwrap_or_default()
    );
    assert_eq!(
        report["answers"]["reviews-b"], 10,
        "all land on B's endpoint: {report}"
    );

    // The client holds its channel open: A's status shows it, in sync.
    let status = cp_a.wait_status("the gRPC client synced", Duration::from_secs(10), |s| {
        s["proxies"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["nodeId"] == CLIENT_NODE
                    && ["cds", "eds", "lds", "rds"]
                        .iter()
                        .all(|t| p["types"][*t]["state"] == "synced")
            })
        })
    });
    assert_eq!(status["cluster"], "a");
    assert!(
        status["config"]["errors"]
            .as_array()
            .is_some_and(|e| e.is_empty()),
        "{status}"
    );

    let text = run_cli(&["status", "--admin", &a.admin_url()]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8_lossy(&text.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(CLIENT_NODE))
        .unwrap_or_else(|| panic!("no row for the client in:\n{text}"));
    assert_eq!(row.matches("SYNCED").count(), 4, "{row}");
    assert!(text.contains("Federation: node"), "{text}");

    // proxy-config shows what the client runs: B's endpoint, and the
    // listener and route gRPC asked for by name.
    let eds = run_cli(&[
        "proxy-config",
        CLIENT_NODE,
        "endpoints",
        "--admin",
        &a.admin_url(),
    ]);
    assert!(
        eds.status.success(),
        "{}",
        String::from_utf8_lossy(&eds.stderr)
    );
    let eds = String::from_utf8_lossy(&eds.stdout);
    assert!(
        eds.contains("outbound|9080||reviews.default.svc.cluster.local"),
        "{eds}"
    );
    assert!(
        eds.contains(&format!("127.0.0.1:{server_port} HEALTHY")),
        "{eds}"
    );
    let lds = run_cli(&[
        "proxy-config",
        CLIENT_NODE,
        "listeners",
        "-o",
        "json",
        "--admin",
        &a.admin_url(),
    ]);
    assert!(
        lds.status.success(),
        "{}",
        String::from_utf8_lossy(&lds.stderr)
    );
    let lds: Value = serde_json::from_slice(&lds.stdout).expect("proxy-config -o json is JSON");
    assert_eq!(
        lds[0]["name"], "reviews.default.svc.cluster.local:9080",
        "{lds}"
    );
    assert_eq!(lds[0]["acked"], true, "{lds}");
    assert!(lds[0]["config"]["api_listener"].is_object(), "{lds}");

    // B scales out: the new endpoint travels B's config → registry → A's
    // endpoint push, and the connected gRPC client accepts it.
    let metrics_url = format!("{}/metrics", a.admin_url());
    let before = http_get(&metrics_url).expect("A's metrics");
    let (_server2, port2) = grpc_server("reviews-b2", dir.path());
    let b_config = format!(
        "{}{}",
        mesh_config(&b, &[&a, &b]),
        reviews_in_b(&[server_port, port2])
    );
    let tmp = cp_b.config_dir.join("mesh.yaml.tmp");
    std::fs::write(&tmp, b_config).expect("write B's new config");
    std::fs::rename(&tmp, cp_b.config_dir.join("mesh.yaml")).expect("replace B's config");
    wait_for(
        "the client to hold both endpoints",
        Duration::from_secs(20),
        || {
            let eds = run_cli(&[
                "proxy-config",
                CLIENT_NODE,
                "endpoints",
                "-o",
                "json",
                "--admin",
                &a.admin_url(),
            ]);
            let eds: Value = serde_json::from_slice(&eds.stdout).ok()?;
            let summary = eds[0]["summary"].as_array()?;
            let both = [server_port, port2].iter().all(|p| {
                summary.iter().any(|l| {
                    l.as_str()
                        .is_some_and(|l| l.starts_with(&format!("127.0.0.1:{p} ")))
                })
            });
            (both && eds[0]["acked"] == true).then_some(())
        },
    );
    // That was an endpoint-only push: EDS of reviews' clusters, nothing else.
    let after = http_get(&metrics_url).expect("A's metrics");
    let full = r#"isthmus_xds_published_pushes_total{scope="full"}"#;
    let endpoints = r#"isthmus_xds_published_pushes_total{scope="endpoints"}"#;
    assert!(
        metric(&after, endpoints) > metric(&before, endpoints),
        "{after}"
    );
    assert_eq!(
        metric(&after, full),
        metric(&before, full),
        "no full push: {after}"
    );
    let status = cp_a.status().unwrap_or_default();
    let client_status = status["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["nodeId"] == CLIENT_NODE))
        .cloned()
        .unwrap_or_default();
    assert!(
        ["cds", "eds", "lds", "rds"]
            .iter()
            .all(|t| client_status["types"][*t]["state"] == "synced"),
        "{client_status}"
    );
}
