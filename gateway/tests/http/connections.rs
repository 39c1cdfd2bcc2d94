//! Connections on both sides: malformed and oversized downstream requests,
//! WebSocket upgrades passed through, and the upstream pool's
//! max-requests-per-connection and idle-timeout limits, and HTTP/2 streams
//! multiplexed on one downstream connection.

use std::time::{Duration, Instant};

use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{http_gateway, route_all_to_app, u32v};
use crate::support::ads::ScriptedAds;
use crate::support::http::*;
use crate::support::resources::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused() {
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    route_all_to_app(&ads, eds_cluster("app"), app.addr);
    let (gw, at) = http_gateway(&ads).await;
    async fn raw(at: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(at).await.expect("connect");
        s.write_all(req).await.expect("write");
        let mut out = vec![0u8; 256];
        let n = tokio::time::timeout(WAIT, s.read(&mut out))
            .await
            .expect("reply in time")
            .expect("read");
        String::from_utf8_lossy(&out[..n]).into_owned()
    }
    let r = raw(
        at,
        b"GET / HTTP/1.1\r\nHost: app\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(at, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "missing Host: {r}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = raw(at, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "oversized headers: {r}");
    assert_eq!(app.hits(), 0, "nothing malformed reaches the app");
    // The gateway is still fine.
    let (status, _, body) = get(&client(), at, "app", "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    route_all_to_app(&ads, eds_cluster("app"), app.addr);
    let (_gw, at) = http_gateway(&ads).await;
    let mut s = tokio::net::TcpStream::connect(at).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "connection closed during the 101 head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"frames after the upgrade")
        .await
        .expect("write");
    let mut echo = vec![0u8; 24];
    tokio::time::timeout(WAIT, s.read_exact(&mut echo))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&echo, b"frames after the upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_limits_reuse() {
    use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    let mut one = eds_cluster("one");
    one.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(HttpProtocolOptions {
            common_http_protocol_options: Some(Common {
                max_requests_per_connection: u32v(1),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    ads.set(
        CDS,
        vec![named("one", one), named("many", eds_cluster("many"))],
    );
    ads.set(
        EDS,
        vec![
            named("one", cla("one", &[(0, &[app.addr])])),
            named("many", cla("many", &[(0, &[app.addr])])),
        ],
    );
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![
                prefix_route("one", "/one", to_cluster("one")),
                prefix_route("many", "/", to_cluster("many")),
            ],
        )],
    );
    let (gw, at) = http_gateway(&ads).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, at, "app", "/one", &[]).await.0, 200);
        assert_eq!(get(&c, at, "app", "/many", &[]).await.0, 200);
    }
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert_eq!(
        metric(&m, "isthmus_gateway_upstream_cx_total{cluster=\"one\"}"),
        Some(10.0)
    );
    assert_eq!(
        metric(&m, "isthmus_gateway_upstream_cx_total{cluster=\"many\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed() {
    use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    let mut c = eds_cluster("app");
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(HttpProtocolOptions {
            common_http_protocol_options: Some(Common {
                idle_timeout: Some(PbDuration {
                    seconds: 0,
                    nanos: 200_000_000,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    route_all_to_app(&ads, c, app.addr);
    let (gw, at) = http_gateway(&ads).await;
    let client = client();
    assert_eq!(get(&client, at, "app", "/", &[]).await.0, 200);
    let active = |m: &str| metric(m, "isthmus_gateway_upstream_cx_active{cluster=\"app\"}");
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert_eq!(active(&m), Some(1.0), "kept alive after the request");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        if active(&m) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "idle connection never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&client, at, "app", "/", &[]).await.0,
        200,
        "a new connection after the idle close"
    );
}

/// The streams of one HTTP/2 connection run on that connection's task:
/// a slow stream must not hold up the others, a stream the client resets
/// must end alone, and the slow one must still complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_of_one_connection_progress_independently() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    route_all_to_app(&ads, eds_cluster("app"), app.addr);
    let (_gw, at) = http_gateway(&ads).await;
    let (send, driver) = h2c_connect::<Full<Bytes>>(at).await;
    let request = |delay_ms: u64| {
        let mut send = send.clone();
        let req = ::http::Request::builder()
            .uri("http://app/")
            .header("x-delay-ms", delay_ms.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        async move {
            let resp = send.send_request(req).await.expect("h2 response");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, body)
        }
    };
    let slow = tokio::spawn(request(4_000));
    // Aborted below, mid-request: the client then resets its stream.
    let reset = tokio::spawn(request(60_000));
    let started = Instant::now();
    let fast = futures::future::join_all((0..20).map(|_| request(0))).await;
    assert!(
        fast.iter().all(|(s, b)| *s == 200 && b == "app"),
        "{fast:?}"
    );
    assert!(
        !slow.is_finished(),
        "20 fast streams waited for the slow one ({:?})",
        started.elapsed()
    );
    reset.abort();
    let (status, body) = tokio::time::timeout(WAIT, slow)
        .await
        .expect("slow stream in time")
        .expect("slow stream task");
    assert_eq!((status.as_u16(), &body[..]), (200, &b"app"[..]));
    assert_eq!(request(0).await.0, 200, "the connection still serves");
    driver.abort();
}
