//! Protocol sniffing on one port, with the listener shape the control plane
//! emits for unnamed ports (`translate::listener::sniff`): HTTP/1.1 and h2c
//! prior knowledge reach the HTTP connection manager (routes apply), raw
//! TCP and a client that sends nothing first fall back to the TCP chain.

mod support;

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use isthmus_control::translate::listener::sniff::sniffing;
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn sniffed_listener() -> Listener {
    let routes = route_config(
        "inline",
        &["*"],
        vec![prefix_route("all", "/", to_cluster("web"))],
    );
    sniffing(
        Listener {
            name: "sniffed".into(),
            address: Some(addr(any_port())),
            ..Default::default()
        },
        FilterChain {
            name: "sniffed-http".into(),
            filters: vec![hcm(RouteSpecifier::RouteConfig(routes))],
            ..Default::default()
        },
        FilterChain {
            name: "sniffed-tcp".into(),
            filters: vec![tcp_proxy_filter("raw")],
            ..Default::default()
        },
    )
}

/// A server-first TCP app: greets, then echoes one line.
async fn greeter() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let at = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = sock.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 hello\n").await;
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    (at, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_h2c_and_raw_tcp_share_one_sniffed_port() {
    let web = HttpBackend::start("web").await;
    let raw = Backend::start("raw").await;
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![
            named("web", eds_cluster("web")),
            named("raw", eds_cluster("raw")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named("web", cla("web", &[(0, &[web.addr])])),
            named("raw", cla("raw", &[(0, &[raw.addr])])),
        ],
    );
    ads.set(LDS, vec![named("sniffed", sniffed_listener())]);
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let at = gw.listener_address("sniffed").expect("bound");

    // HTTP/1.1: through the connection manager (the route sets the backend).
    let (status, _, body) = get(&client(), at, "anything", "/h1", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "web"));
    // h2c with prior knowledge.
    let (status, _, body) = h2c_get(at, &at.to_string(), "/h2").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "web"));
    // Raw TCP bytes that are not HTTP: the TCP chain, bytes unchanged.
    let reply = roundtrip(at, "\x00\x01binary hello").await.expect("tcp");
    assert_eq!(reply, "raw:\x00\x01binary hello");
    // Text that looks like a word but is not a request line.
    let reply = roundtrip(at, "HELLO there, not http\n").await.expect("tcp");
    assert_eq!(reply, "raw:HELLO there, not http\n");
    assert_eq!(
        web.hits(),
        2,
        "only the two HTTP requests reached the HTTP backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_protocol_goes_on_as_tcp_after_the_detection_timeout() {
    let (greeter_at, greeter_task) = greeter().await;
    let web = HttpBackend::start("web").await;
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![
            named("web", eds_cluster("web")),
            named("raw", eds_cluster("raw")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named("web", cla("web", &[(0, &[web.addr])])),
            named("raw", cla("raw", &[(0, &[greeter_at])])),
        ],
    );
    ads.set(LDS, vec![named("sniffed", sniffed_listener())]);
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let at = gw.listener_address("sniffed").expect("bound");

    let mut s = TcpStream::connect(at).await.expect("connect");
    let mut greeting = [0u8; 10];
    tokio::time::timeout(WAIT, s.read_exact(&mut greeting))
        .await
        .expect("the server spoke first through the TCP chain")
        .expect("read greeting");
    assert_eq!(&greeting, b"220 hello\n");
    s.write_all(b"ping\n").await.expect("write");
    let mut echo = [0u8; 5];
    tokio::time::timeout(WAIT, s.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("read echo");
    assert_eq!(&echo, b"ping\n");
    greeter_task.abort();
}
