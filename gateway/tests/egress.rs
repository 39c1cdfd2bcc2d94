//! Egress end to end: a ServiceEntry with `resolution: DNS` and a
//! DestinationRule with `tls.mode: SIMPLE` (caCertificates) go through the
//! control plane's translation; the gateway resolves the host through a
//! local DNS server (TTLs honoured, last good addresses kept while DNS
//! fails) and originates TLS to a local HTTPS server whose certificate
//! comes from its own CA. Then Istio's egress gateway pattern: sidecar →
//! (mTLS) egress gateway → TLS origination.

mod support;
#[path = "support/testdns.rs"]
mod testdns;
mod translate_support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{data_source, transport_socket};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, UpstreamTlsContext,
};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_gateway::{Gateway, GatewayConfig};
use isthmus_xds::{Names, Proxy, TypeUrl};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::ads::ScriptedAds;
use support::http::{any_host_routes, client, get, http_listener, prefix_route, rds, to_cluster};
use support::pki::Ca;
use support::resources::*;
use support::*;
use testdns::TestDns;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const HOST: &str = "api.external.test";
const CLUSTER: &str = "outbound|80||api.external.test";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// A CA of the external world, unrelated to the mesh.
struct ExternalCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl ExternalCa {
    fn new(cn: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("self sign").pem();
        Self { params, key, pem }
    }

    fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .expect("sign");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server cert");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// An HTTPS server answering every request with `id`.
async fn https_server(
    at: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    id: &'static str,
) -> (SocketAddr, JoinSet<()>) {
    let sock = TcpListener::bind(at).await.expect("bind https");
    let addr = sock.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Ok((s, _)) = sock.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(::http::Response::new(Full::new(Bytes::from(id))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, tasks)
}

fn config(yaml: &str) -> ConfigSnapshot {
    translate_support::config("egress.yaml", yaml)
}

/// The ServiceEntry + DestinationRule of Istio's TLS origination task,
/// translated for a sidecar: the `outbound|80||api.external.test` cluster.
fn translated_cluster(https_port: u16, ca_file: &Path) -> Cluster {
    translated(https_port, ca_file, "").0
}

/// As [`translated_cluster`], with `extra` config, and the sidecar's
/// outbound route configurations.
fn translated(https_port: u16, ca_file: &Path, extra: &str) -> (Cluster, Vec<RouteConfiguration>) {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-api
  namespace: foo
spec:
  hosts: [{HOST}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - number: 80
    name: http
    protocol: HTTP
    targetPort: {https_port}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: external-api
  namespace: foo
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 80
      tls:
        mode: SIMPLE
        caCertificates: {}
        sni: {HOST}
"#,
        ca_file.display()
    ) + extra;
    let inputs = Inputs::new(
        Arc::new(config(&yaml)),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    let proxy =
        Proxy::from_node(Some(&translate_support::httpbin_sidecar_node())).expect("proxy node");
    let clusters = generate(
        &inputs,
        &proxy,
        ProxyFlavor::Envoy,
        TypeUrl::Cluster,
        &Names::All,
    );
    let r = clusters
        .iter()
        .find(|r| r.name == CLUSTER)
        .unwrap_or_else(|| {
            panic!(
                "no {CLUSTER} in {:?}",
                clusters.iter().map(|r| &r.name).collect::<Vec<_>>()
            )
        });
    let cluster = Cluster::decode(r.body.value.as_slice()).expect("cluster");
    let routes = generate(
        &inputs,
        &proxy,
        ProxyFlavor::Envoy,
        TypeUrl::RouteConfiguration,
        &Names::All,
    )
    .iter()
    .map(|r| RouteConfiguration::decode(r.body.value.as_slice()).expect("route config"))
    .collect();
    (cluster, routes)
}

/// The same cluster with its trusted CA file replaced.
fn with_ca_file(mut c: Cluster, name: &str, ca_file: &Path) -> Cluster {
    c.name = name.into();
    let Some(ts) = c.transport_socket.as_mut() else {
        panic!("no TLS")
    };
    let Some(transport_socket::ConfigType::TypedConfig(any)) = ts.config_type.as_mut() else {
        panic!("no typed TLS config")
    };
    let mut up = UpstreamTlsContext::decode(any.value.as_slice()).expect("tls");
    let Some(ValidationContextType::ValidationContext(v)) = up
        .common_tls_context
        .as_mut()
        .and_then(|c| c.validation_context_type.as_mut())
    else {
        panic!("no validation context")
    };
    v.trusted_ca = Some(envoy_types::pb::envoy::config::core::v3::DataSource {
        specifier: Some(data_source::Specifier::Filename(
            ca_file.display().to_string(),
        )),
        ..Default::default()
    });
    any.value = up.encode_to_vec();
    c
}

async fn gateway_with_resolver(
    ads: &ScriptedAds,
    dns: SocketAddr,
    role: &str,
    cert: Option<isthmus_gateway::CertReceiver>,
) -> Gateway {
    init();
    let mut cfg = GatewayConfig::new(
        ads.url(),
        node(
            &format!("{role}~127.0.0.1~x.foo~foo.svc.cluster.local"),
            role,
        ),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.cert = cert;
    cfg.drain_time = Duration::from_secs(1);
    cfg.resolver.upstream = vec![dns];
    cfg.resolver.timeout = Some(Duration::from_millis(500));
    Gateway::start(cfg).await.expect("gateway start")
}

/// Calls until the answer satisfies `ok` or the deadline passes.
async fn eventually(at: SocketAddr, path: &str, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let c = client();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, _, body) = get(&c, at, HOST, path, &[]).await;
        if ok(s.as_u16(), &body) || tokio::time::Instant::now() > deadline {
            return (s.as_u16(), body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entry_dns_with_tls_origination_follows_ttls_and_keeps_last_good() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ext_ca = ExternalCa::new("external ca");
    let other_ca = ExternalCa::new("some other ca");
    let ca_file = dir.path().join("ca.pem");
    let other_file = dir.path().join("other.pem");
    std::fs::write(&ca_file, &ext_ca.pem).expect("write ca");
    std::fs::write(&other_file, &other_ca.pem).expect("write ca");

    // Two HTTPS servers on the same port of two loopback addresses; DNS
    // first points at the first with a 1 s TTL.
    let (first, _t1) = https_server(
        "127.0.0.1:0".parse().expect("addr"),
        ext_ca.server_config(HOST),
        "ext-1",
    )
    .await;
    let (second, _t2) = https_server(
        SocketAddr::new("127.0.0.2".parse().expect("ip"), first.port()),
        ext_ca.server_config(HOST),
        "ext-2",
    )
    .await;
    let dns = TestDns::start().await;
    dns.set(HOST, &[first.ip()], 1);

    let cluster = translated_cluster(first.port(), &ca_file);
    let wrong_ca = with_ca_file(cluster.clone(), "wrong-ca", &other_file);
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![named(CLUSTER, cluster), named("wrong-ca", wrong_ca)],
    );
    ads.set(
        RDS,
        vec![any_host_routes(
            "r",
            vec![
                prefix_route("wrong", "/wrong-ca", to_cluster("wrong-ca")),
                prefix_route("all", "/", to_cluster(CLUSTER)),
            ],
        )],
    );
    ads.set(
        LDS,
        vec![named("out", http_listener("out", any_port(), rds("r")))],
    );
    let gw = gateway_with_resolver(&ads, dns.addr, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "sidecar not ready");
    let out = gw.wait_listener("out", WAIT).await.expect("listener bound");

    // Name resolved by the local DNS server, TLS verified against its CA.
    let (s, body) = eventually(out, "/", |s, _| s == 200).await;
    assert_eq!(
        (s, body.as_str()),
        (200, "ext-1"),
        "TLS origination to the DNS-named host"
    );
    assert!(
        dns.asked().iter().any(|n| n == HOST),
        "the gateway asked the test DNS server"
    );

    // The same server checked against another CA is refused.
    let (s, _) = eventually(out, "/wrong-ca", |s, _| s != 200).await;
    assert_eq!(
        s, 503,
        "a certificate from a CA other than caCertificates must fail"
    );

    // TTL 1 s: the new address is picked up by re-resolution.
    dns.set(HOST, &[second.ip()], 1);
    let (s, body) = eventually(out, "/", |_, b| b == "ext-2").await;
    assert_eq!(
        (s, body.as_str()),
        (200, "ext-2"),
        "re-resolution after the TTL"
    );

    // DNS failing: the last good address keeps serving.
    dns.fail(true);
    let before = dns.queries();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dns.queries() < before + 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway stopped re-resolving"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _, body) = get(&client(), out, HOST, "/", &[]).await;
    assert_eq!(
        (s.as_u16(), body.as_str()),
        (200, "ext-2"),
        "last good addresses kept while DNS fails"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_to_egress_gateway_over_mtls_then_tls_origination() {
    init();
    const SIDECAR_ID: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
    const EGRESS_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway";
    let dir = tempfile::tempdir().expect("tempdir");
    let ext_ca = ExternalCa::new("external ca");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ext_ca.pem).expect("write ca");
    let (server, _t) = https_server(
        "127.0.0.1:0".parse().expect("addr"),
        ext_ca.server_config(HOST),
        "ext-via-egress",
    )
    .await;
    let dns = TestDns::start().await;
    dns.set(HOST, &[IpAddr::from([127, 0, 0, 1])], 30);
    let root = Ca::root();
    let inter = root.intermediate("cluster-a");

    // Egress gateway: terminates mesh mTLS from the sidecar, then
    // originates TLS to the external host (the translated cluster).
    let ads_e = ScriptedAds::start().await;
    ads_e.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads_e.set(
        CDS,
        vec![named(CLUSTER, translated_cluster(server.port(), &ca_file))],
    );
    ads_e.set(
        LDS,
        vec![named(
            "egress",
            inbound_listener("egress", any_port(), CLUSTER, &[SIDECAR_ID], false),
        )],
    );
    let (_etx, egress_cert) = inter.workload(&root, EGRESS_ID);
    let egress = gateway_with_resolver(&ads_e, dns.addr, "egress", Some(egress_cert)).await;
    assert!(egress.wait_ready(WAIT).await, "egress gateway not ready");
    let egress_at = egress
        .wait_listener("egress", WAIT)
        .await
        .expect("egress bound");

    // Sidecar: the app's plain HTTP goes to the egress gateway over mTLS.
    let ads_s = ScriptedAds::start().await;
    ads_s.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    let sni = "outbound_.443_._.istio-egressgateway.istio-system.svc.cluster.local";
    ads_s.set(
        CDS,
        vec![named(
            "to-egress",
            mtls_cluster("to-egress", sni, &[EGRESS_ID]),
        )],
    );
    ads_s.set(
        EDS,
        vec![named("to-egress", cla("to-egress", &[(0, &[egress_at])]))],
    );
    ads_s.set(
        RDS,
        vec![any_host_routes(
            "r",
            vec![prefix_route("all", "/", to_cluster("to-egress"))],
        )],
    );
    ads_s.set(
        LDS,
        vec![named("out", http_listener("out", any_port(), rds("r")))],
    );
    let (_stx, sidecar_cert) = inter.workload(&root, SIDECAR_ID);
    let sidecar = gateway_with_resolver(&ads_s, dns.addr, "sidecar", Some(sidecar_cert)).await;
    assert!(sidecar.wait_ready(WAIT).await, "sidecar not ready");
    let out = sidecar
        .wait_listener("out", WAIT)
        .await
        .expect("sidecar bound");

    let (s, body) = eventually(out, "/", |s, _| s == 200).await;
    assert_eq!(
        (s, body.as_str()),
        (200, "ext-via-egress"),
        "sidecar → egress gateway → external HTTPS"
    );
    sidecar.shutdown().await;
    egress.shutdown().await;
}

/// The capture work's `REGISTRY_ONLY` (Sidecar `outboundTrafficPolicy`):
/// the translated outbound routes reach the ServiceEntry host through TLS
/// origination and answer 502 (`block_all`) for a host not in the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_blocks_hosts_outside_the_registry() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ext_ca = ExternalCa::new("external ca");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ext_ca.pem).expect("write ca");
    let (server, _t) = https_server(
        "127.0.0.1:0".parse().expect("addr"),
        ext_ca.server_config(HOST),
        "ext-registered",
    )
    .await;
    let dns = TestDns::start().await;
    dns.set(HOST, &[server.ip()], 30);
    dns.set("unknown.example.com", &[server.ip()], 30);
    let sidecar = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: foo\nspec:\n  outboundTrafficPolicy:\n    mode: REGISTRY_ONLY\n";
    let (cluster, routes) = translated(server.port(), &ca_file, sidecar);
    let rc = routes
        .into_iter()
        .find(|rc| {
            rc.virtual_hosts
                .iter()
                .any(|v| v.domains.iter().any(|d| d == HOST))
        })
        .expect("an outbound route configuration for the ServiceEntry host");
    assert!(
        rc.virtual_hosts.iter().any(|v| v.name == "block_all"),
        "REGISTRY_ONLY adds block_all: {:?}",
        rc.virtual_hosts.iter().map(|v| &v.name).collect::<Vec<_>>()
    );
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named(CLUSTER, cluster)]);
    let rc_name = rc.name.clone();
    ads.set(RDS, vec![named(&rc_name, rc)]);
    ads.set(
        LDS,
        vec![named(
            "out",
            http_listener("out", any_port(), rds(&rc_name)),
        )],
    );
    let gw = gateway_with_resolver(&ads, dns.addr, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "sidecar not ready");
    let out = gw.wait_listener("out", WAIT).await.expect("listener bound");
    let (s, body) = eventually(out, "/", |s, _| s == 200).await;
    assert_eq!(
        (s, body.as_str()),
        (200, "ext-registered"),
        "the registered host passes"
    );
    let (s, _, _) = get(&client(), out, "unknown.example.com", "/", &[]).await;
    assert_eq!(s.as_u16(), 502, "a host outside the registry is refused");
    gw.shutdown().await;
}
