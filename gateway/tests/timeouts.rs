//! The HTTP connection manager's timeouts over real sockets, configured by
//! xDS: `request_timeout` (408), `stream_idle_timeout` (408 before the
//! response starts, a reset after), `request_headers_timeout`, the
//! downstream connection `idle_timeout`, and the route timeout (504 `UT`).

mod support;

use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;
use prost::Message;
use std::net::SocketAddr;
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ms(n: u64) -> Option<PbDuration> {
    Some(PbDuration {
        seconds: (n / 1000) as i64,
        nanos: ((n % 1000) * 1_000_000) as i32,
    })
}

/// An HTTP listener on RDS `80` whose HCM is edited by `edit`.
fn listener_with(edit: impl FnOnce(&mut HttpConnectionManager)) -> Listener {
    let mut l = http_listener("http", any_port(), rds("80"));
    let f = &mut l.filter_chains[0].filters[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("hcm has a typed config");
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm decodes");
    edit(&mut hcm);
    f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
    l
}

struct Setup {
    _gw: isthmus_gateway::Gateway,
    _app: HttpBackend,
    app_hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    at: SocketAddr,
}

async fn setup(
    edit: impl FnOnce(&mut HttpConnectionManager),
    route_timeout_ms: Option<u64>,
) -> (Setup, ScriptedAds) {
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("app", eds_cluster("app"))]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app.addr])]))]);
    let mut action = to_cluster("app");
    action.timeout = route_timeout_ms.and_then(ms);
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![prefix_route("all", "/", action)],
        )],
    );
    ads.set(LDS, vec![named("http", listener_with(edit))]);
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let at = gw.listener_address("http").expect("bound");
    let app_hits = app.hits.clone();
    (
        Setup {
            _gw: gw,
            _app: app,
            app_hits,
            at,
        },
        ads,
    )
}

/// Reads until the peer closes (or `WAIT` passes, which fails the test).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response head (and whatever came with it).
async fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_408_to_a_slow_request() {
    let (s, _ads) = setup(
        |h| {
            h.request_timeout = ms(300);
            h.stream_idle_timeout = ms(0);
        },
        None,
    )
    .await;
    let mut c = TcpStream::connect(s.at).await.expect("connect");
    c.write_all(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nab")
        .await
        .expect("write");
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request timeout"), "{head}");
    assert_eq!(
        s.app_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an incomplete request never reaches the app"
    );
    // A request that arrives whole is unaffected, even when the app is slow.
    let (status, _, body) = get(&client(), s.at, "app", "/hold", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_is_408_before_the_response_and_a_reset_after() {
    let (s, _ads) = setup(|h| h.stream_idle_timeout = ms(400), None).await;
    // The app takes 1 s before its response head: 408 with flag SI.
    let (status, headers, body) = get(&client(), s.at, "app", "/hold", &[]).await;
    assert_eq!(status.as_u16(), 408, "{body}");
    assert_eq!(
        headers
            .get("x-envoy-response-flags")
            .and_then(|v| v.to_str().ok()),
        Some("SI")
    );
    // A streaming exchange that goes quiet after its response started is
    // cut: the chunked response never gets its terminating chunk.
    let mut c = TcpStream::connect(s.at).await.expect("connect");
    c.write_all(
        b"POST /stream HTTP/1.1\r\nHost: app\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .expect("write");
    let rest = read_to_close(&mut c).await;
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains("hello"), "the echo started: {rest}");
    assert!(
        !rest.ends_with("0\r\n\r\n"),
        "the stream was reset, not ended: {rest:?}"
    );
    // Steady traffic is untouched.
    let (status, _, body) = get(&client(), s.at, "app", "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504_ut() {
    let (s, _ads) = setup(|_| {}, Some(200)).await;
    let (status, headers, _) = get(&client(), s.at, "app", "/hold", &[]).await;
    assert_eq!(status.as_u16(), 504);
    assert_eq!(
        headers
            .get("x-envoy-response-flags")
            .and_then(|v| v.to_str().ok()),
        Some("UT")
    );
    let (status, _, _) = get(&client(), s.at, "app", "/", &[]).await;
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_downstream_connections_are_closed_busy_ones_are_not() {
    let (s, _ads) = setup(
        |h| {
            h.common_http_protocol_options = Some(HttpProtocolOptions {
                idle_timeout: ms(300),
                ..Default::default()
            });
        },
        None,
    )
    .await;
    // A request that takes longer than the idle timeout completes: the
    // connection has an active request, so it is not idle.
    let mut c = TcpStream::connect(s.at).await.expect("connect");
    c.write_all(b"GET /hold HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Then, with nothing in flight, the gateway closes the connection.
    let rest = read_to_close(&mut c).await;
    assert!(
        !rest.contains("HTTP/1.1"),
        "no other response on the idle connection: {rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_timeout_closes_a_slow_header_sender() {
    let (s, _ads) = setup(|h| h.request_headers_timeout = ms(300), None).await;
    let mut c = TcpStream::connect(s.at).await.expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nx-slow: ")
        .await
        .expect("write");
    let rest = read_to_close(&mut c).await;
    assert!(
        !rest.contains(" 200 "),
        "no response to a partial head: {rest}"
    );
    assert_eq!(s.app_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Whole heads are fine.
    let (status, _, _) = get(&client(), s.at, "app", "/", &[]).await;
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonsense_timeouts_are_nacked() {
    let (s, ads) = setup(|_| {}, None).await;
    let before = ads.version(LDS);
    let mut bad = listener_with(|h| h.request_timeout = ms(100));
    bad.name = "http".into();
    if let Some(filter::ConfigType::TypedConfig(any)) =
        &mut bad.filter_chains[0].filters[0].config_type
    {
        let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("decodes");
        hcm.stream_idle_timeout = Some(PbDuration {
            seconds: -1,
            nanos: 0,
        });
        *any = pack_any(hcm);
    }
    ads.set(LDS, vec![named("http", bad)]);
    assert!(ads.version(LDS) > before);
    let nack = ads
        .wait_request(WAIT, |r| r.type_url == LDS && r.error_detail.is_some())
        .await
        .expect("the listener with a negative timeout is NACKed");
    let msg = nack.error_detail.expect("detail").message;
    assert!(msg.contains("stream_idle_timeout"), "{msg}");
    // The last good listener keeps serving.
    let (status, _, _) = get(&client(), s.at, "app", "/", &[]).await;
    assert_eq!(status.as_u16(), 200);
}
