//! A cluster's `upstream_connection_options.tcp_keepalive` (DestinationRule
//! `connectionPool.tcp.tcpKeepalive`) reaches the gateway's real upstream
//! socket: the kernel's table (/proc/net/tcp) shows the keepalive timer armed
//! with the configured idle time on the connection to the backend.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::UpstreamConnectionOptions;
use envoy_types::pb::envoy::config::core::v3::TcpKeepalive;
use envoy_types::pb::google::protobuf::UInt32Value;
use support::ads::ScriptedAds;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The keepalive timer of the established connection to `to`, as
/// /proc/net/tcp shows it: `(timer kind, clock ticks until it fires)`.
fn timer_to(to: SocketAddr) -> Option<(u32, u64)> {
    let SocketAddr::V4(v4) = to else { return None };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local rem st tx:rx tr:when ...; 01 = ESTABLISHED.
        if f.get(2) != Some(&want.as_str()) || f.get(3) != Some(&"01") {
            return None;
        }
        let (tr, when) = f.get(5)?.split_once(':')?;
        Some((
            u32::from_str_radix(tr, 16).ok()?,
            u64::from_str_radix(when, 16).ok()?,
        ))
    })
}

/// Waits (up to 5 s) until the connection's timer satisfies `ok`; returns
/// the last reading either way.
async fn settled_timer(to: SocketAddr, ok: impl Fn(u32, u64) -> bool) -> Option<(u32, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let t = timer_to(to);
        // A just-sent segment may briefly hold the retransmit timer.
        if t.is_some_and(|(k, w)| ok(k, w)) || tokio::time::Instant::now() >= deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_keepalive_is_armed_on_the_upstream_socket() {
    init();
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let mut cluster = eds_cluster("svc");
    cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
        tcp_keepalive: Some(TcpKeepalive {
            keepalive_time: Some(UInt32Value { value: 7 }),
            keepalive_interval: Some(UInt32Value { value: 3 }),
            keepalive_probes: Some(UInt32Value { value: 4 }),
        }),
        ..Default::default()
    });
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", cluster)]);
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[backend_addr])]))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let out = gw.listener_address("out").expect("bound");

    let mut client = TcpStream::connect(out).await.expect("connect");
    client.write_all(b"x").await.expect("write");
    let (mut up, _) = tokio::time::timeout(WAIT, backend.accept())
        .await
        .expect("the gateway connects upstream")
        .expect("accept");
    let mut byte = [0u8; 1];
    up.read_exact(&mut byte).await.expect("relayed byte");

    // Timer kind 2 is keepalive; ticks are USER_HZ (100 per second). With
    // the default 2 h idle time it would be far above 7 s.
    let (kind, ticks) = settled_timer(backend_addr, |k, w| k == 2 && w <= 700)
        .await
        .expect("the upstream connection in /proc/net/tcp");
    assert_eq!(kind, 2, "keepalive timer armed");
    assert!(
        ticks <= 7 * 100,
        "fires within the configured 7 s, not the 2 h default: {ticks} ticks"
    );
    drop(client);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_setting_no_keepalive_timer_runs() {
    init();
    let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let backend_addr = backend.local_addr().expect("addr");
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[backend_addr])]))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let out = gw.listener_address("out").expect("bound");
    let mut client = TcpStream::connect(out).await.expect("connect");
    client.write_all(b"x").await.expect("write");
    let (mut up, _) = tokio::time::timeout(WAIT, backend.accept())
        .await
        .expect("the gateway connects upstream")
        .expect("accept");
    let mut byte = [0u8; 1];
    up.read_exact(&mut byte).await.expect("relayed byte");
    let (kind, _) = settled_timer(backend_addr, |k, _| k == 0)
        .await
        .expect("the upstream connection in /proc/net/tcp");
    assert_eq!(kind, 0, "no timer on an idle connection without keepalive");
    drop(client);
    gw.shutdown().await;
}
