//! xDS over mutual TLS (`https://`, the control plane's 15012): the proxy
//! presents its workload certificate and verifies the control plane's SPIFFE
//! ID; the control plane's authorizer (the one `isthmus control` mounts)
//! lets a client speak only for the namespace/service account its
//! certificate names; the stream survives a certificate rotation.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isthmus_gateway::{Gateway, GatewayConfig};
use isthmus_identity::{static_bundle, PeerPolicy, TrustBundle};
use isthmus_xds::{
    GenerateError, Generator, Names, Proxy, Resource, TypeUrl, XdsConfig, XdsServer,
};
use rustls::pki_types::CertificateDer;
use support::pki::Ca;
use support::resources::*;
use support::*;
use tokio::sync::watch;
use tokio_stream::StreamExt;

const TD: &str = "cluster.local";
const CONTROL_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/isthmus-control";
const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const CLUSTER: &str = "outbound|8000||httpbin.default.svc.cluster.local";

/// One listener to one backend; `listener_at` can be moved to prove that
/// an update reached the proxy.
struct StaticConfig {
    listener_at: watch::Receiver<SocketAddr>,
    backend: SocketAddr,
}

impl Generator for StaticConfig {
    fn generate(
        &self,
        _proxy: &Proxy,
        type_url: TypeUrl,
        _names: &Names,
    ) -> Result<Vec<Resource>, GenerateError> {
        let (name, any) = match type_url {
            TypeUrl::Listener => named(
                "out",
                outbound_listener("out", *self.listener_at.borrow(), CLUSTER),
            ),
            TypeUrl::Cluster => named(CLUSTER, eds_cluster(CLUSTER)),
            TypeUrl::ClusterLoadAssignment => named(CLUSTER, cla(CLUSTER, &[(0, &[self.backend])])),
            _ => return Ok(Vec::new()),
        };
        Ok(vec![Resource::new(name, any)])
    }
}

/// What the control plane saw: every TLS handshake's client leaf, and every
/// refusal of its authorizer.
#[derive(Default)]
struct Seen {
    leaves: Mutex<Vec<Option<CertificateDer<'static>>>>,
    refusals: Mutex<Vec<String>>,
}

struct Control {
    addr: SocketAddr,
    seen: Arc<Seen>,
    listener_tx: watch::Sender<SocketAddr>,
    pusher: isthmus_xds::Pusher,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A control plane serving xDS on TLS only, as `isthmus control` does on 15012.
async fn control(ica: &Ca, root: &Ca, at: SocketAddr, backend: SocketAddr) -> Control {
    let own = Arc::new(ica.identity_cert(root, CONTROL_ID));
    let (_certs_tx, certs) = watch::channel(Some(own));
    let bundle = TrustBundle::from_pem(&root.pem, "root").expect("bundle");
    let tls = isthmus_identity::tls::server_config(
        certs,
        static_bundle(bundle),
        PeerPolicy::trust_domain(TD),
        false,
        &[b"h2"],
    )
    .expect("server config");
    let (listener_tx, listener_at) = watch::channel(free_port());
    let registry = prometheus::Registry::new();
    let (xds, pusher) = XdsServer::new(
        Arc::new(StaticConfig {
            listener_at,
            backend,
        }),
        XdsConfig::default(),
        &registry,
    )
    .expect("xds server");
    let seen = Arc::new(Seen::default());
    let seen_auth = seen.clone();
    let xds = xds.with_authorizer(Arc::new(move |proxy: &Proxy, ext: &tonic::Extensions| {
        let r = isthmus_control::app::xds_auth::check(
            TD,
            proxy,
            ext.get::<isthmus_identity::transport::TlsConnectInfo>(),
        );
        if let Err(e) = &r {
            seen_auth.refusals.lock().expect("lock").push(e.clone());
        }
        r
    }));
    let listener = tokio::net::TcpListener::bind(at).await.expect("bind xDS");
    let addr = listener.local_addr().expect("addr");
    let seen_conn = seen.clone();
    let incoming = isthmus_identity::transport::tls_incoming(listener, tls).map(move |c| {
        if let Ok(conn) = &c {
            use tonic::transport::server::Connected;
            let leaf = conn
                .connect_info()
                .peer_certs
                .and_then(|c| c.first().cloned());
            seen_conn.leaves.lock().expect("lock").push(leaf);
        }
        c
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(xds.ads())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );
    Control {
        addr,
        seen,
        listener_tx,
        pusher,
        stop: Some(stop_tx),
    }
}

fn httpbin_node(service_account: &str) -> isthmus_gateway::NodeIdentity {
    let mut n = node(
        "sidecar~127.0.0.1~httpbin-1.default~default.svc.cluster.local",
        "sidecar",
    );
    n.metadata.insert("NAMESPACE".into(), "default".into());
    n.metadata
        .insert("SERVICE_ACCOUNT".into(), service_account.into());
    n
}

async fn start(
    control: &Control,
    node: isthmus_gateway::NodeIdentity,
    cert: isthmus_gateway::CertReceiver,
    server_identity: &str,
) -> Gateway {
    init();
    let mut cfg = GatewayConfig::new(format!("https://{}", control.addr), node, any_port());
    cfg.cert = Some(cert);
    cfg.xds_server_identity = Some(server_identity.to_string());
    Gateway::start(cfg).await.expect("gateway start")
}

/// A loopback port that was free a moment ago (the listener address must
/// be a real change for the proxy to move its listener).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(gw: &Gateway) -> bool {
    admin_get(gw.admin_address(), "/readyz").await.0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_xds_serves_config_and_survives_rotation() {
    let root = Ca::root();
    let ica = root.intermediate("cluster-a");
    let backend = Backend::start("httpbin").await;
    let control = control(&ica, &root, any_port(), backend.addr).await;
    let (cert_tx, cert) = ica.workload(&root, HTTPBIN_ID);
    let gw = start(&control, httpbin_node("httpbin"), cert, CONTROL_ID).await;

    let first_listener = *control.listener_tx.borrow();
    let bound = gw
        .wait_listener("out", Duration::from_secs(20))
        .await
        .expect("listener from xDS over mTLS");
    assert_eq!(bound.port(), first_listener.port());
    eventually_reply(bound, "hi", "httpbin").await;
    assert!(ready(&gw).await);
    {
        let leaves = control.seen.leaves.lock().expect("lock");
        assert_eq!(leaves.len(), 1, "one TLS connection");
        let id = leaves[0]
            .as_ref()
            .and_then(|l| isthmus_gateway::tls::verify::spiffe_uri(l));
        assert_eq!(
            id.as_deref(),
            Some(HTTPBIN_ID),
            "the proxy presents its workload certificate"
        );
    }
    assert!(control.seen.refusals.lock().expect("lock").is_empty());

    // Rotate the workload certificate; the established stream keeps
    // receiving updates without a new handshake.
    let (rotated_tx, rotated) = ica.workload(&root, HTTPBIN_ID);
    cert_tx.send_replace(rotated.borrow().clone());
    drop(rotated_tx);
    let moved = free_port();
    control.listener_tx.send_replace(moved);
    control.pusher.push(2, isthmus_xds::PushScope::Full);
    wait_for("the update after the rotation", || {
        gw.listener_address("out").map(|a| a.port()) == Some(moved.port())
    })
    .await;
    let bound = gw.listener_address("out").expect("moved listener");
    eventually_reply(bound, "after rotation", "httpbin").await;
    assert_eq!(
        control.seen.leaves.lock().expect("lock").len(),
        1,
        "the rotation did not break the xDS connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_must_match_node_metadata() {
    let root = Ca::root();
    let ica = root.intermediate("cluster-a");
    let backend = Backend::start("httpbin").await;
    let control = control(&ica, &root, any_port(), backend.addr).await;
    // A certificate for another service account than the node claims.
    let (_tx, cert) = ica.workload(&root, "spiffe://cluster.local/ns/default/sa/ratings");
    let gw = start(&control, httpbin_node("httpbin"), cert, CONTROL_ID).await;
    wait_for("the control plane to refuse the proxy", || {
        !control.seen.refusals.lock().expect("lock").is_empty()
    })
    .await;
    let refusal = control.seen.refusals.lock().expect("lock")[0].clone();
    assert!(
        refusal.contains("spiffe://cluster.local/ns/default/sa/ratings")
            && refusal.contains("\"httpbin\"")
            && refusal.contains("does not match"),
        "refusal names the certificate and the claimed identity: {refusal}"
    );
    assert!(!ready(&gw).await, "a refused proxy gets no config");

    // The same certificate with matching metadata is served.
    let (_tx2, cert2) = ica.workload(&root, HTTPBIN_ID);
    let ok = start(&control, httpbin_node("httpbin"), cert2, CONTROL_ID).await;
    assert!(ok
        .wait_listener("out", Duration::from_secs(20))
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_identity_is_verified() {
    let root = Ca::root();
    let ica = root.intermediate("cluster-a");
    let backend = Backend::start("httpbin").await;
    let control = control(&ica, &root, any_port(), backend.addr).await;
    let (_tx, cert) = ica.workload(&root, HTTPBIN_ID);
    // The proxy expects another control-plane identity: the handshake fails
    // on the proxy's side, before any request is sent.
    let gw = start(
        &control,
        httpbin_node("httpbin"),
        cert,
        "spiffe://cluster.local/ns/istio-system/sa/someone-else",
    )
    .await;
    // The server sees the TCP connection but no TLS session completes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        assert!(
            !ready(&gw).await,
            "a proxy must not accept an unexpected control plane"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(control.seen.leaves.lock().expect("lock").is_empty());

    // Without a certificate https:// is refused up front with a clear error.
    let mut cfg = GatewayConfig::new(
        format!("https://{}", control.addr),
        httpbin_node("httpbin"),
        any_port(),
    );
    cfg.xds_server_identity = Some(CONTROL_ID.into());
    let err = Gateway::start(cfg)
        .await
        .expect_err("https without a certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
}

/// The control plane restarts after the proxy's certificate rotated: while
/// it is down the proxy keeps serving its last config, and it reconnects
/// presenting the rotated certificate (the TLS client configuration is
/// rebuilt per connection, never kept from the first handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_to_a_restarted_control_plane_with_the_rotated_certificate() {
    let root = Arc::new(Ca::root());
    let ica = Arc::new(root.intermediate("cluster-a"));
    let backend = Backend::start("httpbin").await;
    // The first control plane runs on a runtime of its own, so that
    // shutting that runtime down kills it like a process: listener, xDS
    // stream and all.
    let first_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let first = {
        let (ica, root, backend) = (ica.clone(), root.clone(), backend.addr);
        first_rt
            .spawn(async move { control(&ica, &root, any_port(), backend).await })
            .await
            .expect("first control plane")
    };
    let at = first.addr;
    let (cert_tx, cert) = ica.workload(&root, HTTPBIN_ID);
    let gw = start(&first, httpbin_node("httpbin"), cert, CONTROL_ID).await;
    let bound = gw
        .wait_listener("out", Duration::from_secs(20))
        .await
        .expect("listener from xDS over mTLS");
    eventually_reply(bound, "before", "httpbin").await;

    let (rotated_tx, rotated) = ica.workload(&root, HTTPBIN_ID);
    let rotated_leaf = rotated.borrow().certified_key().cert[0].clone();
    cert_tx.send_replace(rotated.borrow().clone());
    drop(rotated_tx);

    // Waits until the runtime's tasks are dropped, so the listener is
    // closed before the second control plane binds the same address
    // (shutdown_background returned before that and the bind could race).
    tokio::task::spawn_blocking(move || first_rt.shutdown_timeout(Duration::from_secs(10)))
        .await
        .expect("first control plane's runtime shut down");
    drop(first);
    // Static stability: no control plane, same config, still serving.
    eventually_reply(bound, "control plane down", "httpbin").await;
    assert!(
        ready(&gw).await,
        "a proxy with config stays ready without its control plane"
    );

    let second = control(&ica, &root, at, backend.addr).await;
    let moved = *second.listener_tx.borrow();
    wait_for("config from the restarted control plane", || {
        gw.listener_address("out").map(|a| a.port()) == Some(moved.port())
    })
    .await;
    eventually_reply(
        gw.listener_address("out").expect("listener"),
        "after restart",
        "httpbin",
    )
    .await;
    let leaves = second.seen.leaves.lock().expect("lock").clone();
    assert!(!leaves.is_empty(), "the proxy reconnected over TLS");
    assert!(
        leaves.iter().all(|l| l.as_ref() == Some(&rotated_leaf)),
        "every reconnect presented the rotated certificate"
    );
    assert!(second.seen.refusals.lock().expect("lock").is_empty());
}
