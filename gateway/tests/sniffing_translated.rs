//! Protocol sniffing on a service port with no name and no protocol, end to
//! end through the control plane's translation: a ServiceEntry whose port
//! declares nothing and a VirtualService with a header-matched fault are
//! translated for a client sidecar and for the workload's sidecar, and both
//! run as real gateways (mTLS between them) in front of an app that speaks
//! HTTP and raw TCP on one port.
//!
//! - Outbound: HTTP/1.1 and h2c get L7 handling (the fault route, Istio HTTP
//!   metrics, the client's protocol kept upstream); raw bytes pass through
//!   byte-exact on the same port.
//! - Inbound over mTLS: the client's sidecar offers `istio-http/1.1` /
//!   `istio-h2`, so the workload's sidecar serves its requests with its HTTP
//!   chain (destination HTTP metrics with the caller's identity), while the
//!   raw bytes (no such ALPN) take its TCP chain.
//! - Inbound in plaintext: the HTTP inspector sends HTTP to the HTTP chain
//!   and raw bytes to the TCP chain.

mod support;
mod translate_support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::Any;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, Proxy, TypeUrl};
use prost::Message;
use support::ads::ScriptedAds;
use support::http::{client, get, h2c_get, RDS};
use support::pki::Ca;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const HOST: &str = "legacy.foo.svc.cluster.local";
const SERVER_ID: &str = "spiffe://cluster.local/ns/foo/sa/legacy";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bar/sa/client";
const OUTBOUND: &str = "outbound|7000||legacy.foo.svc.cluster.local";
const INBOUND: &str = "inbound|7000||";
/// Pooled client connections stay open; shutting down need not wait long.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: foo}
spec:
  hosts: [legacy.foo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 7000
  workloadSelector:
    labels: {app: legacy}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy-1, namespace: foo}
spec:
  address: 127.0.0.1
  labels: {app: legacy}
  serviceAccount: legacy
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy, namespace: foo}
spec:
  hosts: [legacy.foo.svc.cluster.local]
  http:
  - match:
    - headers:
        x-fault: {exact: teapot}
    fault:
      abort:
        httpStatus: 418
        percentage: {value: 100}
    route:
    - destination: {host: legacy.foo.svc.cluster.local}
  - route:
    - destination: {host: legacy.foo.svc.cluster.local}
"#;

fn inputs() -> Inputs {
    Inputs::new(
        Arc::new(translate_support::config("legacy.yaml", CONFIG)),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    )
}

fn sidecar(id: &str, namespace: &str, app: &str) -> Proxy {
    let node = translate_support::sidecar_node(id, namespace, "NONE", &[("app", app)]);
    Proxy::from_node(Some(&node)).expect("proxy node")
}

/// Every resource the translation gives `proxy`, by type, decoded later.
fn translate(inputs: &Inputs, proxy: &Proxy) -> BTreeMap<TypeUrl, Vec<(String, Any)>> {
    let gen = |t: TypeUrl, names: &Names| {
        generate(inputs, proxy, ProxyFlavor::Envoy, t, names)
            .into_iter()
            .map(|r| (r.name, r.body))
            .collect::<Vec<_>>()
    };
    let mut out = BTreeMap::new();
    let clusters = gen(TypeUrl::Cluster, &Names::All);
    let names = Names::some(clusters.iter().map(|(n, _)| n));
    out.insert(
        TypeUrl::ClusterLoadAssignment,
        gen(TypeUrl::ClusterLoadAssignment, &names),
    );
    out.insert(TypeUrl::Cluster, clusters);
    out.insert(TypeUrl::Listener, gen(TypeUrl::Listener, &Names::All));
    out.insert(
        TypeUrl::RouteConfiguration,
        gen(TypeUrl::RouteConfiguration, &Names::All),
    );
    out
}

fn find<T: Message + Default>(all: &[(String, Any)], name: &str) -> T {
    let (_, any) = all
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("translation has no {name}"));
    T::decode(any.value.as_slice()).expect("decodes")
}

fn set_port(a: &mut Option<Address>, port: u16) {
    if let Some(address::Address::SocketAddress(sa)) = a.as_mut().and_then(|a| a.address.as_mut()) {
        sa.port_specifier = Some(PortSpecifier::PortValue(u32::from(port)));
    }
}

/// Points every endpoint of `cla` at `port` (the translation names the
/// workload's service port; the test's sockets have their own).
fn retarget(cla: &mut ClusterLoadAssignment, port: u16) {
    for group in &mut cla.endpoints {
        for e in &mut group.lb_endpoints {
            if let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = e.host_identifier.as_mut() {
                set_port(&mut ep.address, port);
            }
        }
    }
}

/// The workload: HTTP (HTTP/1.1 or h2c, answering which one it got) when
/// the first byte starts a request line or the HTTP/2 preface, an echo of
/// raw bytes otherwise.
async fn dual_app() -> (SocketAddr, Arc<AtomicU64>, JoinSet<()>) {
    let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let at = sock.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Ok((mut s, _)) = sock.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if !matches!(s.peek(&mut first).await, Ok(1)) {
                    return;
                }
                if first[0].is_ascii_uppercase() {
                    let svc = hyper::service::service_fn(move |req: ::http::Request<_>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let version = format!("{:?}", req.version());
                        async move {
                            Ok::<_, Infallible>(
                                ::http::Response::builder()
                                    .header("x-app-version", version)
                                    .body(Full::new(Bytes::from_static(b"app")))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                } else {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    (at, hits, tasks)
}

/// Writes `bytes` and reads back as many.
async fn echo(at: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(at).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("read echo");
    back
}

/// `istio_requests_total` series of one reporter with this response code.
async fn requests(gw: &isthmus_gateway::Gateway, reporter: &str, code: u16) -> f64 {
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    m.lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains(&format!("reporter=\"{reporter}\""))
                && l.contains(&format!("response_code=\"{code}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_port_is_sniffed_outbound_and_inbound_through_translation() {
    init();
    let (app, app_hits, _app_tasks) = dual_app().await;
    let inputs = inputs();
    let root = Ca::root();
    let inter = root.intermediate("cluster-a");

    // The workload's sidecar: its translated inbound listener and cluster.
    let server_proxy = sidecar(
        "sidecar~127.0.0.1~legacy-1.foo~foo.svc.cluster.local",
        "foo",
        "legacy",
    );
    let server_res = translate(&inputs, &server_proxy);
    let mut inbound: Listener = find(&server_res[&TypeUrl::Listener], "inbound_127.0.0.1_7000");
    assert!(
        inbound
            .listener_filters
            .iter()
            .any(|f| f.name == "envoy.filters.listener.http_inspector"),
        "the inbound listener of an unnamed port sniffs"
    );
    set_port(&mut inbound.address, 0);
    let mut inbound_cluster: Cluster = find(&server_res[&TypeUrl::Cluster], INBOUND);
    if let Some(cla) = inbound_cluster.load_assignment.as_mut() {
        retarget(cla, app.port());
    }
    let server_ads = ScriptedAds::start().await;
    server_ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    server_ads.set(CDS, vec![named(INBOUND, inbound_cluster)]);
    server_ads.set(LDS, vec![named(&inbound.name, inbound.clone())]);
    let (_server_cert_tx, server_cert) = inter.workload(&root, SERVER_ID);
    let server = gateway_with_drain(&server_ads, "sidecar", Some(server_cert), DRAIN).await;
    assert!(server.wait_ready(WAIT).await, "workload sidecar not ready");
    let inbound_at = server
        .listener_address(&inbound.name)
        .expect("inbound bound");

    // The client's sidecar: its translated outbound listener, routes and
    // cluster, the endpoint being the workload sidecar's inbound listener.
    let client_proxy = sidecar(
        "sidecar~127.0.0.2~client-1.bar~bar.svc.cluster.local",
        "bar",
        "client",
    );
    let client_res = translate(&inputs, &client_proxy);
    let mut outbound: Listener = find(&client_res[&TypeUrl::Listener], "outbound_127.0.0.1_7000");
    set_port(&mut outbound.address, 0);
    let mut cla: ClusterLoadAssignment =
        find(&client_res[&TypeUrl::ClusterLoadAssignment], OUTBOUND);
    retarget(&mut cla, inbound_at.port());
    let client_ads = ScriptedAds::start().await;
    client_ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    client_ads.set(CDS, client_res[&TypeUrl::Cluster].clone());
    client_ads.set(EDS, vec![named(OUTBOUND, cla)]);
    client_ads.set(RDS, client_res[&TypeUrl::RouteConfiguration].clone());
    client_ads.set(LDS, vec![named(&outbound.name, outbound.clone())]);
    let (_client_cert_tx, client_cert) = inter.workload(&root, CLIENT_ID);
    let client_gw = gateway_with_drain(&client_ads, "sidecar", Some(client_cert), DRAIN).await;
    assert!(client_gw.wait_ready(WAIT).await, "client sidecar not ready");
    let outbound_at = client_gw
        .listener_address(&outbound.name)
        .expect("outbound bound");

    // Outbound HTTP/1.1: routed, the VirtualService's fault applies by header.
    let c = client();
    let mtls_before = requests(&server, "destination", 200).await;
    let (status, headers, body) = get(&c, outbound_at, HOST, "/plain", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
    assert_eq!(headers["x-app-version"], "HTTP/1.1");
    let hits = app_hits.load(Ordering::SeqCst);
    let (status, _, _) = get(&c, outbound_at, HOST, "/f", &[("x-fault", "teapot")]).await;
    assert_eq!(status.as_u16(), 418, "the header-matched abort applies");
    assert_eq!(app_hits.load(Ordering::SeqCst), hits, "aborted locally");
    // h2c on the same port: HTTP too, and HTTP/2 all the way to the app.
    let (status, headers, _) = h2c_get(outbound_at, HOST, "/h2").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(headers["x-app-version"], "HTTP/2.0");
    // Raw bytes on the same port: the TCP chain, byte-exact both ways.
    let raw: Vec<u8> = (0u8..=255)
        .chain(b"\r\nnot http\r\n\r\n".iter().copied())
        .collect();
    assert_eq!(echo(outbound_at, &raw).await, raw);
    assert!(requests(&client_gw, "source", 418).await >= 1.0);
    assert!(requests(&client_gw, "source", 200).await >= 2.0);
    // Over mTLS the client offered istio-http/1.1 and istio-h2, so the
    // workload's sidecar took its HTTP chain for both requests that reached it.
    assert_eq!(
        requests(&server, "destination", 200).await - mtls_before,
        2.0,
        "the workload's sidecar handled the mTLS requests as HTTP"
    );
    let (_, m) = admin_get(server.admin_address(), "/metrics").await;
    assert!(
        m.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains(&format!("source_principal=\"{CLIENT_ID}\""))),
        "the caller's identity reaches the inbound HTTP metrics:\n{m}"
    );

    // Inbound, plaintext (PERMISSIVE): HTTP to the HTTP chain, bytes to TCP.
    let before = requests(&server, "destination", 200).await;
    let (status, headers, body) = get(&c, inbound_at, HOST, "/in", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
    assert_eq!(headers["x-app-version"], "HTTP/1.1");
    let (status, headers, _) = h2c_get(inbound_at, HOST, "/h2").await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(headers["x-app-version"], "HTTP/2.0");
    assert_eq!(
        requests(&server, "destination", 200).await - before,
        2.0,
        "the workload's sidecar handled both requests as HTTP"
    );
    assert_eq!(echo(inbound_at, &raw).await, raw);

    client_gw.shutdown().await;
    server.shutdown().await;
}
