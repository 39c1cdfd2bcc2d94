//! A caller's sidecar labels TCP (and HTTP without peer metadata) calls
//! with the destination workload Istio's `istio.workload` EDS endpoint
//! metadata describes, instead of `unknown`.

mod support;

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `cla` with Istio's workload metadata on its (single) endpoint.
fn cla_with_workload(name: &str, at: SocketAddr, workload: &str) -> ClusterLoadAssignment {
    let mut c = cla(name, &[(0, &[at])]);
    let mut meta = Metadata::default();
    meta.filter_metadata.insert(
        "istio".into(),
        Struct {
            fields: [(
                "workload".to_string(),
                Value {
                    kind: Some(Kind::StringValue(workload.into())),
                },
            )]
            .into_iter()
            .collect(),
        },
    );
    c.endpoints[0].lb_endpoints[0].metadata = Some(meta);
    c
}

async fn tcp_roundtrip(to: SocketAddr) -> String {
    let mut s = TcpStream::connect(to).await.expect("connect");
    s.write_all(b"x").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("reply in time")
        .expect("read");
    out
}

fn lines<'a>(m: &'a str, prefix: &str) -> Vec<&'a str> {
    m.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_carry_destination_labels_from_eds_metadata() {
    let described = Backend::start("d").await;
    let anonymous = Backend::start("a").await;
    let web = HttpBackend::start("web").await;
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![
            named("described", eds_cluster("described")),
            named("anonymous", eds_cluster("anonymous")),
            named("web", eds_cluster("web")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named(
                "described",
                cla_with_workload(
                    "described",
                    described.addr,
                    "reviews-v2;bookinfo;reviews;v2;west",
                ),
            ),
            named("anonymous", cla("anonymous", &[(0, &[anonymous.addr])])),
            named(
                "web",
                cla_with_workload("web", web.addr, "web;shop;web-canon;r3;east"),
            ),
        ],
    );
    ads.set(
        RDS,
        vec![any_host_routes(
            "out_http",
            vec![prefix_route("default", "/", to_cluster("web"))],
        )],
    );
    ads.set(
        LDS,
        vec![
            named("out_d", outbound_listener("out_d", any_port(), "described")),
            named("out_a", outbound_listener("out_a", any_port(), "anonymous")),
            named(
                "out_http",
                http_listener("out_http", any_port(), rds("out_http")),
            ),
        ],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);

    let out_d = gw.listener_address("out_d").expect("bound");
    let out_a = gw.listener_address("out_a").expect("bound");
    assert_eq!(tcp_roundtrip(out_d).await, "d:x");
    assert_eq!(tcp_roundtrip(out_a).await, "a:x");
    let at = gw.listener_address("out_http").expect("bound");
    let (status, _, body) = get(&client(), at, "web", "/", &[]).await;
    assert_eq!(status, 200, "{body}");

    // Closed-connection and request series are recorded when the call ends;
    // wait for them with a deadline.
    let deadline = tokio::time::Instant::now() + WAIT;
    let m = loop {
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        let done = lines(&m, "istio_tcp_connections_closed_total{").len() >= 2
            && !lines(&m, "istio_requests_total{").is_empty();
        if done || tokio::time::Instant::now() >= deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    let opened = lines(&m, "istio_tcp_connections_opened_total{");
    let described_series: Vec<&&str> = opened
        .iter()
        .filter(|l| l.contains("destination_service=\"described\""))
        .collect();
    assert_eq!(described_series.len(), 1, "{opened:?}");
    let d = described_series[0];
    for want in [
        "reporter=\"source\"",
        "destination_workload=\"reviews-v2\"",
        "destination_workload_namespace=\"bookinfo\"",
        "destination_app=\"reviews\"",
        "destination_version=\"v2\"",
        "destination_canonical_service=\"reviews\"",
        "destination_canonical_revision=\"v2\"",
        "destination_cluster=\"west\"",
    ] {
        assert!(d.contains(want), "missing {want} in {d}");
    }
    let a = opened
        .iter()
        .find(|l| l.contains("destination_service=\"anonymous\""))
        .unwrap_or_else(|| panic!("anonymous series in {opened:?}"));
    assert!(
        a.contains("destination_workload=\"unknown\"")
            && a.contains("destination_cluster=\"unknown\""),
        "an endpoint without metadata stays unknown: {a}"
    );

    let requests = lines(&m, "istio_requests_total{");
    let r = requests
        .iter()
        .find(|l| l.contains("destination_workload=\"web\""))
        .unwrap_or_else(|| panic!("HTTP falls back to EDS metadata: {requests:?}"));
    for want in [
        "destination_workload_namespace=\"shop\"",
        "destination_app=\"web-canon\"",
        "destination_version=\"r3\"",
        "destination_cluster=\"east\"",
    ] {
        assert!(r.contains(want), "missing {want} in {r}");
    }
    gw.shutdown().await;
}
