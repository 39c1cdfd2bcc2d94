//! Istio metrics keep a bounded label space: 10,000 clients from distinct
//! source addresses (127.0.0.0/8 is all loopback on Linux) add no series,
//! and peers announcing ever new workloads in Istio's peer metadata headers
//! stop adding series at the proxy's bound.

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use isthmus_gateway::metrics::peer::{OwnHeaders, PEER_METADATA};
use isthmus_gateway::metrics::workload::MAX_PEERS;
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const CLIENTS: u32 = 10_000;
const CONCURRENCY: u32 = 64;

/// `127.200.x.y` for client `i`: one distinct source address each.
fn client_ip(i: u32) -> Ipv4Addr {
    let i = i + 1;
    Ipv4Addr::new(127, 200, (i / 250) as u8, (i % 250 + 1) as u8)
}

async fn roundtrip_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<String> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    let mut s = sock.connect(to).await?;
    s.write_all(b"x").await?;
    s.shutdown().await?;
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
    Ok(out)
}

/// Every series (name and labels) of the exposition.
fn series(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_client_addresses_add_no_series() {
    let backend = Backend::start("b").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[backend.addr])]))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");

    let run = |from: u32, to: u32| async move {
        let mut set = tokio::task::JoinSet::new();
        for w in 0..CONCURRENCY {
            set.spawn(async move {
                let mut i = from + w;
                while i < to {
                    let r = roundtrip_from(client_ip(i), out).await;
                    assert_eq!(r.expect("proxied"), "b:x", "client {}", client_ip(i));
                    i += CONCURRENCY;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("client task");
        }
    };
    run(0, 100).await;
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    let early = series(&m);
    assert_eq!(
        metric(&m, "istio_tcp_connections_opened_total{"),
        Some(100.0),
        "{m}"
    );
    run(100, CLIENTS).await;
    // The client reads the reply's end before the proxy's relay task has
    // finished and counted the close, so the last few closes may lag.
    let deadline = tokio::time::Instant::now() + WAIT;
    let m = loop {
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        let closed = metric(&m, "istio_tcp_connections_closed_total{");
        if closed == Some(f64::from(CLIENTS)) || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        metric(&m, "istio_tcp_connections_opened_total{"),
        Some(f64::from(CLIENTS)),
        "every connection counted in one series"
    );
    assert_eq!(
        metric(&m, "istio_tcp_connections_closed_total{"),
        Some(f64::from(CLIENTS))
    );
    let late = series(&m);
    assert_eq!(
        early, late,
        "the set of series must not grow with client addresses"
    );
    assert!(
        !m.contains("127.200."),
        "no client address in any label:\n{m}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_announcing_new_workloads_stop_adding_series_at_the_bound() {
    let backend = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    // An inbound (destination-reporting) HTTP listener to the local app.
    const INBOUND: &str = "inbound|9080||";
    ads.set(CDS, vec![named(INBOUND, eds_cluster(INBOUND))]);
    ads.set(
        EDS,
        vec![named(INBOUND, cla(INBOUND, &[(0, &[backend.addr])]))],
    );
    ads.set(
        RDS,
        vec![any_host_routes(
            "inbound|http|9080",
            vec![prefix_route("default", "/", to_cluster(INBOUND))],
        )],
    );
    ads.set(
        LDS,
        vec![named(
            "virtualInbound",
            http_listener("virtualInbound", any_port(), rds("inbound|http|9080")),
        )],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let at = gw.listener_address("virtualInbound").expect("bound");
    let c = client();
    let peers = MAX_PEERS + 100;
    for i in 0..peers {
        let meta = serde_json::json!({
            "NAMESPACE": "attacker",
            "WORKLOAD_NAME": format!("w{i}"),
        });
        let own = OwnHeaders::new(
            &format!("sidecar~10.0.0.1~w{i}.attacker~attacker.svc.cluster.local"),
            meta.as_object().expect("object"),
            "",
        )
        .expect("headers");
        let mut h = ::http::HeaderMap::new();
        own.insert(&mut h);
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, headers, body) = get(&c, at, "reviews", "/", &refs).await;
        assert_eq!(status, 200, "{body}");
        if i == 0 {
            // A peer that spoke gets this proxy's own metadata back.
            assert!(headers.contains_key(PEER_METADATA), "{headers:?}");
        }
    }
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    let requests: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("source_workload=\"w0\"")),
        "peer metadata labels the source: {requests:?}"
    );
    // One series per announced workload up to the bound, then `unknown`.
    assert!(
        requests.len() <= MAX_PEERS + 1,
        "{} series for {peers} announced workloads",
        requests.len()
    );
    let total: f64 = requests
        .iter()
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    assert_eq!(total, peers as f64, "every request still counted");
    gw.shutdown().await;
}
