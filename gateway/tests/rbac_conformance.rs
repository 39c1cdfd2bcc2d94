//! AuthorizationPolicy conformance through a real proxy: Istio YAML →
//! the control plane's selection and RBAC translation → the gateway's xDS
//! (real ADS, real listeners on loopback, mTLS with leaves signed by the
//! identity crate's CA for several SPIFFE IDs, one of them from another
//! cluster's intermediate and one from another trust domain) → echo
//! backends. Each case asserts allowed / 403 `RBAC: access denied` / closed.
//!
//! One gateway per distinct policy set; many requests per gateway.

mod support;
mod translate_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::util::pack_any;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use isthmus_control::translate::rbac;
use isthmus_gateway::tls::WorkloadCertificate;
use isthmus_identity::ca::{
    create_intermediate, create_root, Authority, CaMaterial, IntermediateOptions, LeafPolicy,
    RootOptions,
};
use isthmus_identity::SpiffeId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::ads::ScriptedAds;
use support::http::HttpBackend;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROOT_NS: &str = "istio-system";
const HTTP_CLUSTER: &str = "inbound|9080||";
const TCP_CLUSTER: &str = "inbound|9000||";
const HOST: &str = "echo.default.svc.cluster.local";
const SNI: &str = "outbound_.9080_._.echo.default.svc.cluster.local";

// Callers.
const WEB: &str = "spiffe://cluster.local/ns/frontend/sa/web";
const API: &str = "spiffe://cluster.local/ns/backend/sa/api";
/// Same trust domain, signed by cluster east's intermediate.
const BATCH_EAST: &str = "spiffe://cluster.local/ns/frontend/sa/batch";
/// Another trust domain.
const WEB_OTHER_TD: &str = "spiffe://other.td/ns/frontend/sa/web";

/// The federation's CAs, as `isthmus ca init|intermediate` makes them.
struct Pki {
    root_pem: String,
    west: Authority,
    east: Authority,
    other: Authority,
}

fn authority(root: &CaMaterial, cluster: &str, td: &str) -> Authority {
    let mut opts = IntermediateOptions::new(cluster);
    opts.trust_domain = td.to_string();
    let inter = create_intermediate(root, &opts).expect("intermediate");
    Authority::new(
        &inter,
        &inter.cert_pem,
        &root.cert_pem,
        td,
        LeafPolicy::default(),
    )
    .expect("authority")
}

impl Pki {
    fn new() -> Self {
        let root = create_root(&RootOptions::default()).expect("root");
        Pki {
            root_pem: root.cert_pem.clone(),
            west: authority(&root, "west", "cluster.local"),
            east: authority(&root, "east", "cluster.local"),
            other: authority(&root, "remote", "other.td"),
        }
    }

    /// A leaf for `id` from the CA that would issue it: key made locally,
    /// CSR signed by the cluster's intermediate.
    fn leaf(&self, id: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca = if id == BATCH_EAST {
            &self.east
        } else if id.starts_with("spiffe://other.td/") {
            &self.other
        } else {
            &self.west
        };
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("ia5"))];
        let csr = params.serialize_request(&key).expect("csr");
        let caller = SpiffeId::parse(id).expect("spiffe id");
        let issued = ca
            .sign_csr(&csr.pem().expect("pem"), &caller, None)
            .expect("signed");
        let chain = issued
            .chain_pem
            .iter()
            .take(issued.chain_pem.len().saturating_sub(1)) // without the root
            .map(|p| pem_der(p))
            .collect();
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    fn root_der(&self) -> CertificateDer<'static> {
        pem_der(&self.root_pem)
    }
}

fn pem_der(pem: &str) -> CertificateDer<'static> {
    isthmus_identity::pem::certs_from_pem(pem, "test certificate")
        .expect("PEM certificate")
        .remove(0)
}

/// Istio YAML → the RBAC filters for the workload `default/echo`
/// (labels app=echo), exactly as the sidecar translation selects them.
fn translate(yaml: &str) -> (Vec<HttpFilter>, Vec<Filter>) {
    let config = translate_support::config("policies.yaml", yaml);
    let labels: BTreeMap<String, String> = [("app".to_string(), "echo".to_string())].into();
    let applicable = rbac::applicable(&config, ROOT_NS, "default", &labels);
    (
        rbac::http_filters(&applicable),
        rbac::network_filters(&applicable),
    )
}

fn hcm_with(http_rbac: Vec<HttpFilter>) -> Filter {
    let mut filters = http_rbac;
    filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let routes = RouteConfiguration {
        name: HTTP_CLUSTER.into(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound|http|9080".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        HTTP_CLUSTER.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(
            HttpConnectionManager {
                codec_type: CodecType::Auto as i32,
                stat_prefix: "inbound".into(),
                route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
                http_filters: filters,
                ..Default::default()
            },
        ))),
    }
}

fn tcp_with(mut rbac: Vec<Filter>) -> Vec<Filter> {
    rbac.push(Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: "inbound".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(TCP_CLUSTER.into())),
            ..Default::default()
        }))),
    });
    rbac
}

/// Reserves loopback ports so policies can name the listeners' real ports.
async fn reserve_ports() -> (u16, u16, u16) {
    let a = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let b = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let c = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ports = (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
        c.local_addr().expect("addr").port(),
    );
    drop((a, b, c));
    ports
}

/// A sidecar inbound: HTTP over STRICT mTLS, HTTP plaintext, TCP over
/// STRICT mTLS, all enforcing the same policies.
struct Workload {
    gw: Option<isthmus_gateway::Gateway>,
    _cert: tokio::sync::watch::Sender<Arc<WorkloadCertificate>>,
    _ads: ScriptedAds,
    http_tls: SocketAddr,
    http_plain: SocketAddr,
    tcp_tls: SocketAddr,
}

impl Workload {
    async fn start(
        pki: &Pki,
        yaml_template: &str,
        http_backend: SocketAddr,
        tcp_backend: SocketAddr,
    ) -> Self {
        let (p_tls, p_plain, p_tcp) = reserve_ports().await;
        let yaml = yaml_template
            .replace("{HTTP_PORT}", &p_tls.to_string())
            .replace("{PLAIN_PORT}", &p_plain.to_string())
            .replace("{TCP_PORT}", &p_tcp.to_string());
        let (http_rbac, net_rbac) = translate(&yaml);
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let ads = ScriptedAds::start().await;
        ads.set(SDS, vec![named("ROOTCA", rootca(&pki.root_pem))]);
        ads.set(
            CDS,
            vec![
                named(HTTP_CLUSTER, eds_cluster(HTTP_CLUSTER)),
                named(TCP_CLUSTER, eds_cluster(TCP_CLUSTER)),
            ],
        );
        ads.set(
            EDS,
            vec![
                named(HTTP_CLUSTER, cla(HTTP_CLUSTER, &[(0, &[http_backend])])),
                named(TCP_CLUSTER, cla(TCP_CLUSTER, &[(0, &[tcp_backend])])),
            ],
        );
        let hcm = hcm_with(http_rbac);
        let tcp_listener = {
            let mut l = inbound_listener_with("tcp", at(p_tcp), hcm.clone(), &[]);
            l.filter_chains[0].filters = tcp_with(net_rbac);
            l
        };
        let plain = Listener {
            name: "plain".into(),
            address: Some(addr(at(p_plain))),
            filter_chains: vec![FilterChain {
                name: "plaintext".into(),
                filters: vec![hcm.clone()],
                ..Default::default()
            }],
            ..Default::default()
        };
        ads.set(
            LDS,
            vec![
                named("https", inbound_listener_with("https", at(p_tls), hcm, &[])),
                named("plain", plain),
                named("tcp", tcp_listener),
            ],
        );
        let (chain, key) = pki.leaf("spiffe://cluster.local/ns/default/sa/echo");
        let wc = WorkloadCertificate::new(chain, key, vec![pki.root_der()]).expect("cert");
        let (cert_tx, rx) = tokio::sync::watch::channel(Arc::new(wc));
        let gw = gateway(&ads, "sidecar", Some(rx)).await;
        assert!(gw.wait_ready(WAIT).await, "gateway ready");
        let mut bound = Vec::new();
        for name in ["https", "plain", "tcp"] {
            bound.push(
                gw.wait_listener(name, WAIT).await.unwrap_or_else(|| {
                    panic!("listener {name} bound (NACKed?): {:?}", nacks(&ads))
                }),
            );
        }
        Workload {
            gw: Some(gw),
            _cert: cert_tx,
            _ads: ads,
            http_tls: bound[0],
            http_plain: bound[1],
            tcp_tls: bound[2],
        }
    }

    async fn stop(mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }
}

fn nacks(ads: &ScriptedAds) -> Vec<String> {
    ads.requests()
        .into_iter()
        .filter_map(|r| r.error_detail.map(|e| e.message))
        .collect()
}

fn tls_config(pki: &Pki, id: &str) -> Arc<rustls::ClientConfig> {
    let verifier = Arc::new(
        isthmus_gateway::tls::SpiffeVerifier::new(&[pki.root_der()], vec![]).expect("verifier"),
    );
    let (chain, key) = pki.leaf(id);
    Arc::new(
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .expect("client cert"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy)]
enum Via {
    /// HTTP/1.1 over mTLS as this SPIFFE ID.
    Mtls(&'static str),
    /// HTTP/1.1 in plaintext (no principal).
    Plain,
    /// Raw TCP over mTLS as this SPIFFE ID.
    Tcp(&'static str),
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    via: Via,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
}

const fn http(
    name: &'static str,
    via: Via,
    method: &'static str,
    path: &'static str,
    expect: Expect,
) -> Case {
    Case {
        name,
        via,
        method,
        path,
        host: HOST,
        headers: &[],
        expect,
    }
}

const fn tcp(name: &'static str, id: &'static str, expect: Expect) -> Case {
    Case {
        name,
        via: Via::Tcp(id),
        method: "",
        path: "",
        host: "",
        headers: &[],
        expect,
    }
}

struct Clients {
    configs: BTreeMap<&'static str, Arc<rustls::ClientConfig>>,
}

impl Clients {
    fn new(pki: &Pki) -> Self {
        let configs = [WEB, API, BATCH_EAST, WEB_OTHER_TD]
            .into_iter()
            .map(|id| (id, tls_config(pki, id)))
            .collect();
        Clients { configs }
    }

    async fn tls(
        &self,
        id: &str,
        at: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(at).await?;
        let name = rustls::pki_types::ServerName::try_from(SNI).expect("sni");
        tokio_rustls::TlsConnector::from(self.configs[id].clone())
            .connect(name, tcp)
            .await
    }
}

/// Sends one HTTP/1.1 request over `io`; (status, response flags, body).
async fn http1<T>(io: T, c: &Case) -> Result<(u16, String, String), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut b = ::http::Request::builder()
        .method(c.method)
        .uri(c.path)
        .header("host", c.host);
    for (k, v) in c.headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::new())).expect("request"))
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let flags = resp
        .headers()
        .get("x-envoy-response-flags")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, flags, String::from_utf8_lossy(&body).into_owned()))
}

/// Runs one case; `Err` describes a mismatch.
async fn run(clients: &Clients, w: &Workload, c: &Case) -> Result<(), String> {
    let outcome = match c.via {
        Via::Mtls(id) => {
            let io = clients
                .tls(id, w.http_tls)
                .await
                .map_err(|e| format!("mTLS connect: {e}"))?;
            http1(io, c).await?
        }
        Via::Plain => {
            let io = tokio::net::TcpStream::connect(w.http_plain)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            http1(io, c).await?
        }
        Via::Tcp(id) => {
            let mut io = clients
                .tls(id, w.tcp_tls)
                .await
                .map_err(|e| format!("mTLS connect: {e}"))?;
            let mut out = String::new();
            let r = async {
                io.write_all(b"ping").await?;
                io.shutdown().await?;
                tokio::time::timeout(WAIT, io.read_to_string(&mut out))
                    .await
                    .map_err(|_| std::io::Error::other("timed out"))?
            }
            .await;
            let got = match (r, out.as_str()) {
                (_, "tcp:ping") => Expect::Allow,
                // Denied: closed without a byte from the backend.
                (_, "") => Expect::Deny,
                (r, other) => return Err(format!("unexpected TCP reply {other:?} ({r:?})")),
            };
            return (got == c.expect)
                .then_some(())
                .ok_or_else(|| format!("expected {:?}, connection was {got:?}", c.expect));
        }
    };
    // HEAD responses carry no body.
    let denied_body = if c.method == "HEAD" {
        ""
    } else {
        "RBAC: access denied"
    };
    match (c.expect, outcome) {
        (Expect::Allow, (200, _, _)) => Ok(()),
        (Expect::Deny, (403, flags, body)) if body == denied_body && flags == "RBAC" => Ok(()),
        (e, (status, flags, body)) => Err(format!(
            "expected {e:?}, got {status} flags={flags:?} {body:?}"
        )),
    }
}

struct Env {
    pki: Pki,
    clients: Clients,
    http_backend: HttpBackend,
    tcp_backend: Backend,
}

impl Env {
    async fn new() -> Self {
        init();
        let pki = Pki::new();
        let clients = Clients::new(&pki);
        Env {
            pki,
            clients,
            http_backend: HttpBackend::start("echo").await,
            tcp_backend: Backend::start("tcp").await,
        }
    }

    /// Starts a workload with `yaml`, runs every case, returns failures.
    async fn check(&self, set: &str, yaml: &str, cases: &[Case]) -> Vec<String> {
        let w = Workload::start(
            &self.pki,
            yaml,
            self.http_backend.addr,
            self.tcp_backend.addr,
        )
        .await;
        let mut failures = Vec::new();
        for c in cases {
            if let Err(e) = run(&self.clients, &w, c).await {
                failures.push(format!("[{set}] {}: {e}", c.name));
            }
        }
        // Every denial is counted once (HTTP request or TCP connection).
        let gw = w.gw.as_ref().expect("running");
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        let denied: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("isthmus_gateway_rbac_decisions_total{")
                    && l.contains("result=\"denied\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let want = cases.iter().filter(|c| c.expect == Expect::Deny).count() as f64;
        if denied != want {
            failures.push(format!(
                "[{set}] metrics: {denied} denials counted, {want} expected"
            ));
        }
        w.stop().await;
        failures
    }
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    let mut out = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
    );
    for line in spec.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

use Expect::{Allow, Deny};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_conformance() {
    let env = Env::new().await;
    let mut failures = Vec::new();
    let mut total = 0usize;
    let sets: Vec<(&str, String, Vec<Case>)> = vec![
        (
            "no policy allows everything",
            String::new(),
            vec![
                http("get", Via::Mtls(WEB), "GET", "/", Allow),
                http("post plaintext", Via::Plain, "POST", "/x", Allow),
                tcp("tcp", API, Allow),
            ],
        ),
        (
            "seed: allow GET",
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rbac/allow-get.yaml"),
            )
            .expect("fixture"),
            vec![
                http("GET passes", Via::Mtls(WEB), "GET", "/productpage", Allow),
                http("POST denied", Via::Mtls(WEB), "POST", "/productpage", Deny),
                http("HEAD denied", Via::Mtls(API), "HEAD", "/", Deny),
                http("GET plaintext passes", Via::Plain, "GET", "/", Allow),
                // ALLOW rule with HTTP-only fields never matches TCP.
                tcp("tcp denied", WEB, Deny),
            ],
        ),
        (
            "ALLOW without rules denies all",
            policy("default", "nothing", "action: ALLOW"),
            vec![
                http("get", Via::Mtls(WEB), "GET", "/", Deny),
                http("plain", Via::Plain, "GET", "/", Deny),
                tcp("tcp", WEB, Deny),
            ],
        ),
        (
            "rules: [{}] allows all",
            policy("default", "all", "rules:\n- {}"),
            vec![
                http("get", Via::Mtls(WEB), "GET", "/", Allow),
                http("delete plaintext", Via::Plain, "DELETE", "/a/b", Allow),
                tcp("tcp", API, Allow),
            ],
        ),
        (
            "DENY before ALLOW",
            format!(
                "{}{}",
                policy("default", "allow-all", "rules:\n- {}"),
                policy(
                    "default",
                    "no-admin",
                    "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [\"/admin*\"]\n- from:\n  - source:\n      principals: [\"cluster.local/ns/backend/sa/api\"]\n  to:\n  - operation:\n      methods: [\"DELETE\"]"
                )
            ),
            vec![
                http("admin denied", Via::Mtls(WEB), "GET", "/admin/users", Deny),
                http("admin exact denied", Via::Mtls(WEB), "GET", "/admin", Deny),
                http("admin with query denied", Via::Plain, "GET", "/admin?x=1", Deny),
                http("public allowed", Via::Mtls(WEB), "GET", "/public", Allow),
                http("api DELETE denied", Via::Mtls(API), "DELETE", "/items/1", Deny),
                http("web DELETE allowed", Via::Mtls(WEB), "DELETE", "/items/1", Allow),
                // DENY with HTTP-only fields on TCP denies more (fails closed).
                tcp("tcp denied by HTTP-only DENY", WEB, Deny),
            ],
        ),
        (
            "principals",
            policy(
                "default",
                "web-only",
                "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/web\"]",
            ),
            vec![
                http("web allowed", Via::Mtls(WEB), "GET", "/", Allow),
                http("api denied", Via::Mtls(API), "GET", "/", Deny),
                http("east batch denied", Via::Mtls(BATCH_EAST), "GET", "/", Deny),
                http("other trust domain denied", Via::Mtls(WEB_OTHER_TD), "GET", "/", Deny),
                http("plaintext denied", Via::Plain, "GET", "/", Deny),
                tcp("tcp web allowed", WEB, Allow),
                tcp("tcp api closed", API, Deny),
            ],
        ),
        (
            "cross-cluster and cross-trust-domain principals",
            policy(
                "default",
                "remote",
                "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/batch\", \"other.td/ns/frontend/sa/web\"]",
            ),
            vec![
                http("east cluster allowed", Via::Mtls(BATCH_EAST), "GET", "/", Allow),
                http("other trust domain allowed", Via::Mtls(WEB_OTHER_TD), "GET", "/", Allow),
                http("local web denied", Via::Mtls(WEB), "GET", "/", Deny),
                tcp("tcp east allowed", BATCH_EAST, Allow),
                tcp("tcp local web closed", WEB, Deny),
            ],
        ),
        (
            "principal wildcards and notPrincipals",
            policy(
                "default",
                "wild",
                "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/*\"]\n      notPrincipals: [\"*/sa/batch\"]\n- from:\n  - source:\n      principals: [\"*\"]\n  to:\n  - operation:\n      paths: [\"/open\"]",
            ),
            vec![
                http("prefix match", Via::Mtls(WEB), "GET", "/", Allow),
                http("excluded by suffix", Via::Mtls(BATCH_EAST), "GET", "/", Deny),
                http("other namespace", Via::Mtls(API), "GET", "/", Deny),
                http("any authenticated on /open", Via::Mtls(API), "GET", "/open", Allow),
                http("plaintext not authenticated on /open", Via::Plain, "GET", "/open", Deny),
            ],
        ),
        (
            "namespaces",
            format!(
                "{}{}",
                policy(
                    "default",
                    "frontend",
                    "rules:\n- from:\n  - source:\n      namespaces: [\"frontend\"]",
                ),
                policy(
                    "default",
                    "not-frontend-deny-post",
                    "action: DENY\nrules:\n- from:\n  - source:\n      notNamespaces: [\"frontend\"]\n  to:\n  - operation:\n      methods: [\"POST\"]",
                )
            ),
            vec![
                http("frontend web", Via::Mtls(WEB), "GET", "/", Allow),
                http("frontend in east cluster", Via::Mtls(BATCH_EAST), "POST", "/", Allow),
                http("frontend in other trust domain", Via::Mtls(WEB_OTHER_TD), "GET", "/", Allow),
                http("backend denied", Via::Mtls(API), "GET", "/", Deny),
                http("plaintext denied", Via::Plain, "GET", "/", Deny),
                tcp("tcp frontend allowed", WEB, Allow),
            ],
        ),
        (
            "paths, methods and hosts with wildcards",
            policy(
                "default",
                "ops",
                "rules:\n- to:\n  - operation:\n      methods: [\"GET\", \"HEAD\"]\n      paths: [\"/api/*\", \"*.css\", \"/exact\"]\n  - operation:\n      hosts: [\"*.example.com\"]\n      notPaths: [\"/private*\"]",
            ),
            vec![
                http("prefix path", Via::Mtls(WEB), "GET", "/api/v1/items", Allow),
                http("prefix path HEAD", Via::Plain, "HEAD", "/api/x", Allow),
                http("suffix path", Via::Mtls(WEB), "GET", "/static/site.css", Allow),
                http("exact path", Via::Mtls(WEB), "GET", "/exact", Allow),
                http("exact path is exact", Via::Mtls(WEB), "GET", "/exact/more", Deny),
                http("query ignored by path match", Via::Mtls(WEB), "GET", "/exact?a=b", Allow),
                http("wrong method", Via::Mtls(WEB), "POST", "/api/v1/items", Deny),
                http("api prefix needs slash", Via::Mtls(WEB), "GET", "/apix", Deny),
                Case {
                    host: "shop.example.com",
                    ..http("host suffix", Via::Mtls(WEB), "POST", "/cart", Allow)
                },
                Case {
                    host: "SHOP.Example.COM:8443",
                    ..http("host case and port", Via::Mtls(WEB), "POST", "/cart", Allow)
                },
                Case {
                    host: "shop.example.com",
                    ..http("host but notPaths", Via::Mtls(WEB), "POST", "/private/x", Deny)
                },
                Case {
                    host: "example.com",
                    ..http("bare domain is not *.example.com", Via::Mtls(WEB), "POST", "/cart", Deny)
                },
            ],
        ),
        (
            "ports",
            format!(
                "{}{}",
                policy(
                    "default",
                    "ports",
                    "rules:\n- to:\n  - operation:\n      ports: [\"{HTTP_PORT}\", \"{TCP_PORT}\"]",
                ),
                policy(
                    "default",
                    "deny-plain-port",
                    "action: DENY\nrules:\n- to:\n  - operation:\n      notPorts: [\"{HTTP_PORT}\", \"{TCP_PORT}\"]\n      methods: [\"DELETE\"]",
                )
            ),
            vec![
                http("mTLS port allowed", Via::Mtls(API), "GET", "/", Allow),
                http("plaintext port not listed", Via::Plain, "GET", "/", Deny),
                tcp("tcp port allowed", API, Allow),
                http("mTLS port DELETE allowed", Via::Mtls(API), "DELETE", "/", Allow),
            ],
        ),
        (
            "ipBlocks and remoteIpBlocks",
            format!(
                "{}{}",
                policy(
                    "default",
                    "loopback",
                    "rules:\n- from:\n  - source:\n      ipBlocks: [\"127.0.0.0/8\"]\n      notIpBlocks: [\"127.0.0.2\"]\n  to:\n  - operation:\n      methods: [\"GET\"]\n- from:\n  - source:\n      remoteIpBlocks: [\"127.0.0.1/32\"]\n  to:\n  - operation:\n      methods: [\"PUT\"]\n- from:\n  - source:\n      ipBlocks: [\"10.0.0.0/8\"]\n  to:\n  - operation:\n      methods: [\"POST\"]",
                ),
                policy(
                    "default",
                    "deny-outside",
                    "action: DENY\nrules:\n- from:\n  - source:\n      notRemoteIpBlocks: [\"127.0.0.0/8\"]",
                )
            ),
            vec![
                http("loopback GET", Via::Plain, "GET", "/", Allow),
                http("remote ip PUT", Via::Mtls(API), "PUT", "/", Allow),
                http("10/8 POST denied", Via::Plain, "POST", "/", Deny),
                tcp("tcp from loopback with HTTP-only rules", WEB, Deny),
            ],
        ),
        (
            "when conditions",
            policy(
                "default",
                "when",
                "rules:\n- when:\n  - key: request.headers[x-team]\n    values: [\"blue\", \"green*\"]\n  - key: source.namespace\n    notValues: [\"backend\"]\n- from:\n  - source:\n      principals: [\"*\"]\n  when:\n  - key: source.principal\n    values: [\"cluster.local/ns/backend/sa/api\"]\n  - key: destination.port\n    values: [\"{HTTP_PORT}\", \"{TCP_PORT}\"]\n  - key: connection.sni\n    values: [\"outbound_.9080_._.*\"]\n- when:\n  - key: source.ip\n    values: [\"127.0.0.1\"]\n  - key: remote.ip\n    values: [\"127.0.0.0/8\"]\n  - key: request.headers[x-debug]\n    values: [\"*\"]\n",
            ),
            vec![
                Case {
                    headers: &[("x-team", "blue")],
                    ..http("header exact", Via::Mtls(WEB), "GET", "/", Allow)
                },
                Case {
                    headers: &[("x-team", "greenish")],
                    ..http("header prefix", Via::Plain, "GET", "/", Allow)
                },
                Case {
                    headers: &[("x-team", "red")],
                    ..http("header mismatch", Via::Mtls(WEB), "GET", "/", Deny)
                },
                Case {
                    headers: &[("x-team", "blue")],
                    ..http("header but excluded namespace falls to principal rule", Via::Mtls(API), "GET", "/", Allow)
                },
                http("source.principal + port + sni", Via::Mtls(API), "GET", "/", Allow),
                http("source.principal mismatch", Via::Mtls(BATCH_EAST), "GET", "/", Deny),
                Case {
                    headers: &[("x-debug", "1")],
                    ..http("source.ip + remote.ip + header presence", Via::Plain, "GET", "/", Allow)
                },
                http("no header", Via::Plain, "GET", "/", Deny),
                tcp("tcp api: principal, port, sni", API, Allow),
                tcp("tcp web: only HTTP-only rules", WEB, Deny),
            ],
        ),
        (
            "AUDIT never denies",
            policy("default", "audit", "action: AUDIT\nrules:\n- to:\n  - operation:\n      methods: [\"POST\"]"),
            vec![
                http("audited POST passes", Via::Mtls(WEB), "POST", "/", Allow),
                http("GET passes", Via::Plain, "GET", "/", Allow),
                tcp("tcp passes", WEB, Allow),
            ],
        ),
        (
            "selection: root namespace, own namespace, selectors",
            format!(
                "{}{}{}{}",
                policy(ROOT_NS, "mesh-deny-put", "action: DENY\nrules:\n- to:\n  - operation:\n      methods: [\"PUT\"]"),
                policy("backend", "other-namespace", "action: DENY\nrules:\n- {}"),
                policy("default", "other-workload", "selector:\n  matchLabels:\n    app: other\naction: DENY\nrules:\n- {}"),
                policy("default", "this-workload", "selector:\n  matchLabels:\n    app: echo\naction: DENY\nrules:\n- to:\n  - operation:\n      paths: [\"/blocked\"]"),
            ),
            vec![
                http("mesh-wide DENY applies", Via::Mtls(WEB), "PUT", "/", Deny),
                http("other namespace's policy does not", Via::Mtls(WEB), "GET", "/", Allow),
                http("selector matching this workload", Via::Plain, "GET", "/blocked", Deny),
                http("other paths pass", Via::Plain, "GET", "/fine", Allow),
            ],
        ),
        (
            "TCP policies",
            format!(
                "{}{}",
                policy(
                    "default",
                    "tcp-allow",
                    "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/web\", \"cluster.local/ns/frontend/sa/batch\"]\n  to:\n  - operation:\n      ports: [\"{TCP_PORT}\"]\n- from:\n  - source:\n      namespaces: [\"backend\"]\n  to:\n  - operation:\n      ports: [\"{HTTP_PORT}\"]",
                ),
                policy(
                    "default",
                    "tcp-deny",
                    "action: DENY\nrules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/batch\"]",
                )
            ),
            vec![
                tcp("web allowed", WEB, Allow),
                tcp("batch denied by DENY", BATCH_EAST, Deny),
                tcp("api only on HTTP port", API, Deny),
                http("api on HTTP port", Via::Mtls(API), "GET", "/", Allow),
                http("web not on HTTP port", Via::Mtls(WEB), "GET", "/", Deny),
            ],
        ),
    ];
    for (name, yaml, cases) in &sets {
        total += cases.len();
        failures.extend(env.check(name, yaml, cases).await);
    }
    assert!(total >= 60, "only {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
