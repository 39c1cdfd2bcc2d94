//! `max_request_headers_kb` on real sockets, below hyper's 8 KiB HTTP/1
//! buffer: exact over HTTP/1.1 (the request target plus header names and
//! values, as Envoy counts them: at the limit passes, one byte over gets
//! 431 and the connection closes), and over HTTP/2, h2c and h2 over TLS,
//! with the h2 crate as the client: the gateway advertises the limit as
//! SETTINGS_MAX_HEADER_LIST_SIZE (checked with nghttp, an independent
//! client), a header block over it gets 431 on that stream only, and the
//! connection's other streams and the proxy go on.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::{Message, Name};
use support::ads::ScriptedAds;
use support::http::*;
use support::pki::Ca;
use support::resources::*;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The limit under test: 2 KiB, a quarter of hyper's smallest buffer.
const LIMIT_KB: u32 = 2;
const LIMIT: usize = LIMIT_KB as usize * 1024;
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bar/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/foo/sa/app";

/// The test HCM with `max_request_headers_kb` set.
fn limited_hcm() -> Filter {
    let mut f = hcm(RouteSpecifier::RouteConfig(route_config(
        "inline",
        &["*"],
        vec![prefix_route("all", "/", to_cluster("app"))],
    )));
    let Some(filter::ConfigType::TypedConfig(any)) = f.config_type.as_mut() else {
        unreachable!("hcm() is a typed config");
    };
    let mut h = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
    h.max_request_headers_kb = Some(UInt32Value { value: LIMIT_KB });
    any.value = h.encode_to_vec();
    f
}

fn h2c_listener() -> Listener {
    Listener {
        name: "h2c".into(),
        address: Some(addr(any_port())),
        filter_chains: vec![envoy_types::pb::envoy::config::listener::v3::FilterChain {
            filters: vec![limited_hcm()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Mesh mTLS in front of the same HCM, offering ALPN h2.
fn tls_listener() -> Listener {
    let mut l = inbound_listener_with("tls", any_port(), limited_hcm(), &[CLIENT_ID]);
    let socket = l.filter_chains[0]
        .transport_socket
        .as_mut()
        .expect("tls chain");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = socket.config_type.as_mut() else {
        unreachable!("a typed TLS context");
    };
    let mut ctx = DownstreamTlsContext::decode(any.value.as_slice()).expect("tls context");
    if let Some(c) = ctx.common_tls_context.as_mut() {
        c.alpn_protocols = vec!["h2".into(), "http/1.1".into()];
    }
    *any = Any {
        type_url: DownstreamTlsContext::type_url(),
        value: ctx.encode_to_vec(),
    };
    l
}

struct Setup {
    app: HttpBackend,
    gw: isthmus_gateway::Gateway,
    root: Ca,
    client: (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    _server_cert: tokio::sync::watch::Sender<Arc<isthmus_gateway::WorkloadCertificate>>,
}

async fn setup() -> Setup {
    let app = HttpBackend::start("app").await;
    let root = Ca::root();
    let inter = root.intermediate("cluster-a");
    let ads = ScriptedAds::start().await;
    ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads.set(CDS, vec![named("app", eds_cluster("app"))]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app.addr])]))]);
    ads.set(
        LDS,
        vec![named("h2c", h2c_listener()), named("tls", tls_listener())],
    );
    let (server_cert_tx, server_cert) = inter.workload(&root, SERVER_ID);
    let gw = gateway(&ads, "sidecar", Some(server_cert)).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let client = inter.leaf(CLIENT_ID);
    Setup {
        app,
        gw,
        root,
        client,
        _server_cert: server_cert_tx,
    }
}

/// Sends a raw HTTP/1.1 head whose Envoy-counted size is `counted` bytes
/// (`/` + `host: app` + `x-pad: …`); returns the reply and whether the
/// gateway closed the connection after it.
async fn h1_head_of(at: SocketAddr, counted: usize) -> (String, bool) {
    let pad = counted - ("/".len() + "host".len() + "app".len() + "x-pad".len());
    let head = format!(
        "GET / HTTP/1.1\r\nhost: app\r\nx-pad: {}\r\n\r\n",
        "p".repeat(pad)
    );
    let mut s = TcpStream::connect(at).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the whole response: up to the body's end, or to EOF.
    let closed = loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap_or(0);
        if n == 0 {
            break true;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\napp") {
            break false;
        }
    };
    (String::from_utf8_lossy(&reply).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_limit_is_exact_below_hypers_buffer() {
    let s = setup().await;
    let at = s.gw.listener_address("h2c").expect("bound");

    let (reply, closed) = h1_head_of(at, LIMIT).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "at the limit: {reply}");
    assert!(!closed, "a good request keeps the connection");
    assert_eq!(s.app.hits(), 1);

    let (reply, closed) = h1_head_of(at, LIMIT + 1).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "one byte over: {reply}");
    assert!(closed, "the connection closes after a 431");
    let (reply, _) = h1_head_of(at, 6 * 1024).await;
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "6 KiB of headers: {reply}"
    );
    assert_eq!(s.app.hits(), 1, "refused heads never reach the app");

    // The access metrics saw the 431s; the gateway still serves.
    let (_, m) = admin_get(s.gw.admin_address(), "/metrics").await;
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"431\"")
            && l.contains("response_flags=\"DPE\"")),
        "431s are counted with the DPE flag:\n{m}"
    );
    let (reply, _) = h1_head_of(at, 100).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A request carrying `pad` bytes in one header value.
fn h2_request(pad: usize, end: bool) -> ::http::Request<()> {
    let mut b = ::http::Request::builder()
        .method(if end { "GET" } else { "POST" })
        .uri("http://app/");
    if pad > 0 {
        b = b.header("x-pad", "p".repeat(pad));
    }
    b.body(()).expect("request")
}

/// Over one HTTP/2 connection: a stream in flight, an oversized one that
/// gets 431 (or a reset), then the first completes and a new one succeeds.
async fn oversized_stream_alone_is_refused<T>(io: T)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");

    // A: a POST whose body is still open.
    let (a_resp, mut a_body) = client.send_request(h2_request(0, false), false).expect("A");
    // B: a header block over the limit.
    let mut client = client.ready().await.expect("ready for B");
    let (b_resp, _) = client
        .send_request(h2_request(LIMIT + 512, true), true)
        .expect("B sent");
    let b = tokio::time::timeout(WAIT, b_resp)
        .await
        .expect("B answered in time");
    match b {
        Ok(r) => assert_eq!(r.status().as_u16(), 431, "oversized header block"),
        Err(e) => assert!(e.is_reset(), "B must get 431 or a stream reset, not {e}"),
    }

    // A goes on: finish its body, get its answer.
    a_body
        .send_data(Bytes::from_static(b"hello"), true)
        .expect("A body");
    let a = tokio::time::timeout(WAIT, a_resp)
        .await
        .expect("A answered in time")
        .expect("A survives B's refusal");
    assert_eq!(a.status().as_u16(), 200);

    // C on the same connection, just under the limit as h2 counts it.
    let mut client = client.ready().await.expect("ready for C");
    let (c_resp, _) = client
        .send_request(h2_request(1024, true), true)
        .expect("C");
    let c = tokio::time::timeout(WAIT, c_resp)
        .await
        .expect("C answered in time")
        .expect("the connection survives");
    assert_eq!(c.status().as_u16(), 200);
    assert!(!driver.is_finished(), "the connection is still up");
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_refuses_an_oversized_header_block_on_its_stream_only() {
    let s = setup().await;
    let at = s.gw.listener_address("h2c").expect("bound");
    let tcp = TcpStream::connect(at).await.expect("connect");
    oversized_stream_alone_is_refused(tcp).await;
    assert_eq!(s.app.hits(), 2, "A and C reached the app, B did not");
    // The proxy is fine: a new connection works.
    let (status, _, _) = get(&client(), at, "app", "/", &[]).await;
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_refuses_an_oversized_header_block_on_its_stream_only() {
    let s = setup().await;
    let at = s.gw.listener_address("tls").expect("bound");
    let verifier = Arc::new(
        isthmus_gateway::tls::SpiffeVerifier::new(std::slice::from_ref(&s.root.der), vec![])
            .expect("verifier"),
    );
    let (chain, key) = (s.client.0.clone(), s.client.1.clone_key());
    let mut config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(at).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("app.foo.svc").expect("sni");
    let tls = connector.connect(name, tcp).await.expect("mTLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    oversized_stream_alone_is_refused(tls).await;
    assert_eq!(s.app.hits(), 2, "A and C reached the app, B did not");
}

/// The limit, as an independent HTTP/2 client reads it from the SETTINGS
/// frame the gateway sends first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_advertised_as_settings_max_header_list_size() {
    let s = setup().await;
    let at = s.gw.listener_address("h2c").expect("bound");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("nghttp")
            .args(["-nv", "-t", "5", &format!("http://{at}/")])
            .output()
    })
    .await
    .expect("join");
    let out = match out {
        Ok(o) => o,
        Err(e) if std::env::var_os("ISTHMUS_ALLOW_SKIP").is_some_and(|v| v == "1") => {
            eprintln!("skipping: nghttp not runnable ({e}); apt-get install nghttp2-client");
            return;
        }
        Err(e) => panic!("nghttp is needed (apt-get install nghttp2-client): {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let advertised = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("[SETTINGS_MAX_HEADER_LIST_SIZE(0x06):")?
                .strip_suffix(']')?
                .parse::<usize>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no SETTINGS_MAX_HEADER_LIST_SIZE from the gateway:\n{text}"));
    assert_eq!(advertised, LIMIT);
    assert!(
        text.contains(":status: 200"),
        "nghttp's own request went through:\n{text}"
    );
}
