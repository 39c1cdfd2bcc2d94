//! The ingress gateway end to end, configured by the control plane's own
//! translation of a Gateway, VirtualServices and core/v1 Secrets
//! (`credentialName`): TLS termination with a certificate per SNI host,
//! MUTUAL client verification against the Secret's CA, PASSTHROUGH to a
//! backend that terminates TLS itself, `httpsRedirect`, and a malformed
//! credential update that leaves the last good certificate in place.
//! Clients: rustls + hyper, and `curl` as an independent one.

mod support;
mod translate_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, Secret, TlsCertificate,
};
use envoy_types::pb::google::protobuf::Any;
use http_body_util::{BodyExt, Full};
use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, Proxy, TypeUrl};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A user CA issuing DNS-named certificates (not the mesh's SPIFFE CA).
struct UserCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl UserCa {
    fn new(cn: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self sign");
        Self {
            pem: cert.pem(),
            params,
            key,
        }
    }

    fn leaf(&self, name: &str, client: bool) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![name.to_string()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn config(yaml: &str) -> ConfigSnapshot {
    translate_support::config("ingress.yaml", yaml)
}

/// The ingress gateway's xDS node as the control plane sees it.
fn ingress_proxy() -> Proxy {
    let node = translate_support::node(
        "router~127.0.0.1~ingress-1.istio-system~istio-system.svc.cluster.local",
        &[("NAMESPACE", "istio-system"), ("ISTHMUS_ROLE", "ingress")],
        &[("istio", "ingressgateway")],
    );
    Proxy::from_node(Some(&node)).expect("ingress node")
}

fn translated<T: Message + Default>(inputs: &Inputs, t: TypeUrl, names: &Names) -> Vec<T> {
    generate(inputs, &ingress_proxy(), ProxyFlavor::Envoy, t, names)
        .into_iter()
        .map(|r| T::decode(r.body.value.as_slice()).expect("decode"))
        .collect()
}

/// Gateway listeners rebound to port 0 on loopback, by their Gateway port.
fn rebind(listeners: Vec<Listener>) -> BTreeMap<u32, Listener> {
    let mut out = BTreeMap::new();
    for mut l in listeners {
        let Some(address::Address::SocketAddress(sa)) =
            l.address.as_mut().and_then(|a| a.address.as_mut())
        else {
            continue;
        };
        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
            continue;
        };
        sa.address = "127.0.0.1".into();
        sa.port_specifier = Some(PortSpecifier::PortValue(0));
        out.insert(port, l);
    }
    out
}

/// Every cluster the routes and TCP proxies refer to.
fn referenced_clusters(listeners: &[Listener], routes: &[RouteConfiguration]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rc in routes {
        for vh in &rc.virtual_hosts {
            for r in &vh.routes {
                if let Some(route::Action::Route(a)) = &r.action {
                    if let Some(route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier {
                        out.insert(c.clone());
                    }
                }
            }
        }
    }
    for l in listeners {
        for fc in &l.filter_chains {
            for f in &fc.filters {
                if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    if let Ok(tp) = TcpProxy::decode(any.value.as_slice()) {
                        if let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = tp.cluster_specifier
                        {
                            out.insert(c);
                        }
                    }
                }
            }
        }
    }
    out
}

fn tls_client(roots_pem: &str, client: Option<&Leaf>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .map(|c| c.expect("pem"))
                    .collect(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// GET https://{sni}/ through `at`; the status and body, or why it failed.
/// The leaf certificate's DNS name the server presented comes back too.
async fn https_get(
    at: SocketAddr,
    sni: &str,
    roots_pem: &str,
    client: Option<&Leaf>,
) -> Result<(u16, String, String), String> {
    let tcp = TcpStream::connect(at).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tls_client(roots_pem, client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| dns_name(c.as_ref()))
        .unwrap_or_default();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = ::http::Request::builder()
        .uri("/hello")
        .header("host", sni)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        presented,
    ))
}

fn dns_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("cert");
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        })
        .unwrap_or_default()
}

/// A backend that terminates TLS itself (the PASSTHROUGH target): answers
/// every connection with a line naming itself.
async fn tls_backend(leaf: &Leaf) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .map(|c| c.expect("pem"))
            .collect(),
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = sock.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(b"passthrough backend\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (at, task)
}

fn gateway_yaml(a: &Leaf, b: &Leaf, client_ca: &UserCa) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: a-cred, namespace: istio-system}}
type: kubernetes.io/tls
data:
  tls.crt: {a_crt}
  tls.key: {a_key}
---
apiVersion: v1
kind: Secret
metadata: {{name: b-cred, namespace: istio-system}}
type: kubernetes.io/tls
data:
  tls.crt: {b_crt}
  tls.key: {b_key}
  ca.crt: {ca}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [a.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: 443, name: https-a, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, credentialName: a-cred}}
  - port: {{number: 443, name: https-b, protocol: HTTPS}}
    hosts: [b.example.com]
    tls: {{mode: MUTUAL, credentialName: b-cred}}
  - port: {{number: 443, name: tls-c, protocol: TLS}}
    hosts: [c.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [web.example.internal]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: istio-system}}
spec:
  hosts: [secure.example.internal]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: web.example.internal, port: {{number: 8080}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: istio-system}}
spec:
  hosts: [c.example.com]
  gateways: [gw]
  tls:
  - match: [{{port: 443, sniHosts: [c.example.com]}}]
    route:
    - destination: {{host: secure.example.internal, port: {{number: 443}}}}
"#,
        a_crt = b64(&a.cert_pem),
        a_key = b64(&a.key_pem),
        b_crt = b64(&b.cert_pem),
        b_key = b64(&b.key_pem),
        ca = b64(&client_ca.pem),
    )
}

fn credential_names() -> Names {
    Names::some(["a-cred", "b-cred", "b-cred-cacert"])
}

fn sds(secrets: Vec<Secret>) -> Vec<(String, Any)> {
    secrets
        .into_iter()
        .map(|s| (s.name.clone(), envoy_types::util::pack_any(s)))
        .collect()
}

/// `curl` as an independent TLS client: the body, or its error output.
/// A scripted control plane serving the translated ingress config, with
/// the terminated hosts' clusters on `web` and passthrough on `secure`.
async fn serve(
    listeners: &BTreeMap<u32, Listener>,
    routes: &[RouteConfiguration],
    secrets: Vec<Secret>,
    web: SocketAddr,
    secure: SocketAddr,
) -> ScriptedAds {
    let lds: Vec<Listener> = listeners.values().cloned().collect();
    let clusters = referenced_clusters(&lds, routes);
    assert!(
        clusters.len() >= 2,
        "routes and passthrough name clusters: {clusters:?}"
    );
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        clusters.iter().map(|c| named(c, eds_cluster(c))).collect(),
    );
    ads.set(
        EDS,
        clusters
            .iter()
            .map(|name| {
                let to = if name.contains("secure") { secure } else { web };
                named(name, cla(name, &[(0, &[to])]))
            })
            .collect(),
    );
    ads.set(
        RDS,
        routes.iter().map(|r| named(&r.name, r.clone())).collect(),
    );
    ads.set(SDS, sds(secrets));
    ads.set(LDS, lds.iter().map(|l| named(&l.name, l.clone())).collect());
    ads
}

async fn curl(at: SocketAddr, host: &str, ca_file: &Path) -> Result<String, String> {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--cacert"])
        .arg(ca_file)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", at.port()))
        .arg(format!("https://{host}:{}/curl", at.port()))
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            format!("curl could not run ({e}); CI installs it (.cfg in .ci/run): is it on PATH?")
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_tls_sni_mutual_passthrough_and_redirect_from_control_translation() {
    let server_ca = UserCa::new("ingress test server CA");
    let client_ca = UserCa::new("ingress test client CA");
    let other_ca = UserCa::new("someone else's CA");
    let a = server_ca.leaf("a.example.com", false);
    let b = server_ca.leaf("b.example.com", false);
    let c = server_ca.leaf("c.example.com", false);
    let good_client = client_ca.leaf("client.example.com", true);
    let bad_client = other_ca.leaf("client.example.com", true);

    let inputs = Inputs::new(
        Arc::new(config(&gateway_yaml(&a, &b, &client_ca))),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    let listeners = rebind(translated(&inputs, TypeUrl::Listener, &Names::All));
    assert!(
        listeners.contains_key(&443) && listeners.contains_key(&80),
        "listeners for 80 and 443: {:?}",
        listeners.keys()
    );
    let routes: Vec<RouteConfiguration> =
        translated(&inputs, TypeUrl::RouteConfiguration, &Names::All);
    let secrets: Vec<Secret> = translated(&inputs, TypeUrl::Secret, &credential_names());
    assert_eq!(
        secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["a-cred", "b-cred", "b-cred-cacert"],
        "every credential is served from the Secrets"
    );

    // Backends: HTTP for the terminated hosts, TLS for passthrough.
    let web = HttpBackend::start("web").await;
    let (secure, secure_task) = tls_backend(&c).await;
    let ads = serve(&listeners, &routes, secrets, web.addr, secure).await;
    let gw = gateway(&ads, "ingress", None).await;
    assert!(
        gw.wait_ready(WAIT).await,
        "ingress gateway never became ready"
    );
    let https = gw
        .listener_address(&listeners[&443].name)
        .expect("443 bound");
    let plain = gw.listener_address(&listeners[&80].name).expect("80 bound");

    // SIMPLE: each host gets its own certificate, chosen by SNI.
    let (status, body, presented) = https_get(https, "a.example.com", &server_ca.pem, None)
        .await
        .expect("a.example.com over TLS");
    assert_eq!((status, body.as_str()), (200, "web"));
    assert_eq!(presented, "a.example.com");
    // An SNI no server claims is refused (no chain).
    let unknown = https_get(https, "x.example.com", &server_ca.pem, None).await;
    assert!(
        unknown.is_err(),
        "unknown SNI must not be served: {unknown:?}"
    );

    // MUTUAL: the CA from the Secret's ca.crt (served as b-cred-cacert).
    let without = https_get(https, "b.example.com", &server_ca.pem, None).await;
    assert!(
        without.is_err(),
        "MUTUAL without a client certificate: {without:?}"
    );
    let wrong = https_get(https, "b.example.com", &server_ca.pem, Some(&bad_client)).await;
    assert!(
        wrong.is_err(),
        "MUTUAL with a foreign client certificate: {wrong:?}"
    );
    let (status, body, presented) =
        https_get(https, "b.example.com", &server_ca.pem, Some(&good_client))
            .await
            .expect("MUTUAL with a valid client certificate");
    assert_eq!(
        (status, body.as_str(), presented.as_str()),
        (200, "web", "b.example.com")
    );

    // PASSTHROUGH: the backend's own certificate and bytes arrive untouched.
    let tcp = TcpStream::connect(https).await.expect("connect");
    let mut tls = tls_client(&server_ca.pem, None)
        .connect(ServerName::try_from("c.example.com").expect("name"), tcp)
        .await
        .expect("handshake with the passthrough backend");
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| dns_name(c.as_ref()))
        .unwrap_or_default();
    assert_eq!(presented, "c.example.com");
    let mut line = String::new();
    let _ = tls.read_to_string(&mut line).await;
    assert_eq!(line, "passthrough backend\n");

    // httpsRedirect on the plaintext server.
    let (status, headers, _) = get(&client(), plain, "a.example.com", "/x?y=1", &[]).await;
    assert_eq!(status.as_u16(), 301);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some("https://a.example.com/x?y=1")
    );

    // An independent client.
    let dir = tempfile::tempdir().expect("tmp");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &server_ca.pem).expect("write ca");
    match curl(https, "a.example.com", &ca_file).await {
        Ok(body) => assert_eq!(body, "web"),
        Err(e) => panic!("curl through the ingress failed: {e}"),
    }

    // A malformed credential update is NACKed; the last good one stays.
    let inline = |text: &str| {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(text.to_string())),
            ..Default::default()
        })
    };
    let broken = Secret {
        name: "a-cred".into(),
        // a.example.com's certificate with b.example.com's key.
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&a.cert_pem),
            private_key: inline(&b.key_pem),
            ..Default::default()
        })),
    };
    let mut next = sds(translated(&inputs, TypeUrl::Secret, &credential_names()));
    next.retain(|(n, _)| n != "a-cred");
    next.push(("a-cred".into(), envoy_types::util::pack_any(broken)));
    ads.set(SDS, next);
    let nacked = ads
        .wait_request(WAIT, |r| {
            r.type_url == SDS
                && r.error_detail
                    .as_ref()
                    .is_some_and(|e| e.message.contains("a-cred"))
        })
        .await;
    assert!(nacked.is_some(), "the malformed credential was not NACKed");
    let (status, _, presented) = https_get(https, "a.example.com", &server_ca.pem, None)
        .await
        .expect("a.example.com still served with the last good certificate");
    assert_eq!((status, presented.as_str()), (200, "a.example.com"));

    // A rotated credential takes effect for new handshakes.
    let rotated_ca = UserCa::new("rotated server CA");
    let a2 = rotated_ca.leaf("a.example.com", false);
    let yaml = gateway_yaml(&a2, &b, &client_ca);
    let inputs2 = Inputs::new(
        Arc::new(config(&yaml)),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    ads.set(
        SDS,
        sds(translated(&inputs2, TypeUrl::Secret, &credential_names())),
    );
    assert!(
        ads.wait_ack(SDS, WAIT).await,
        "rotated credential not accepted"
    );
    let rotated = https_get(https, "a.example.com", &rotated_ca.pem, None).await;
    assert!(
        rotated.is_ok(),
        "rotated certificate not presented: {rotated:?}"
    );
    drop(gw);
    secure_task.abort();
}

/// A Gateway server whose `credentialName` Secret does not exist: as with
/// Envoy's SDS initial fetch timeout, the gateway still becomes ready,
/// serves the hosts whose credentials exist, and fails only the handshakes
/// that need the missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_credential_does_not_keep_the_ingress_unready() {
    let server_ca = UserCa::new("ingress test server CA");
    let client_ca = UserCa::new("ingress test client CA");
    let a = server_ca.leaf("a.example.com", false);
    let b = server_ca.leaf("b.example.com", false);
    let c = server_ca.leaf("c.example.com", false);
    let inputs = Inputs::new(
        Arc::new(config(&gateway_yaml(&a, &b, &client_ca))),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    let listeners = rebind(translated(&inputs, TypeUrl::Listener, &Names::All));
    let routes: Vec<RouteConfiguration> =
        translated(&inputs, TypeUrl::RouteConfiguration, &Names::All);
    // b-cred's Secret is gone: only a-cred is served.
    let secrets: Vec<Secret> = translated(&inputs, TypeUrl::Secret, &credential_names())
        .into_iter()
        .filter(|s: &Secret| s.name == "a-cred")
        .collect();
    let web = HttpBackend::start("web").await;
    let (secure, _secure_task) = tls_backend(&c).await;
    let ads = serve(&listeners, &routes, secrets, web.addr, secure).await;

    init();
    let mut cfg = isthmus_gateway::GatewayConfig::new(
        ads.url(),
        node(
            "ingress~127.0.0.1~x.default~default.svc.cluster.local",
            "ingress",
        ),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.secret_warm_timeout = Duration::from_secs(1);
    let gw = isthmus_gateway::Gateway::start(cfg)
        .await
        .expect("gateway start");
    assert!(
        gw.wait_ready(WAIT).await,
        "a missing credential kept the ingress gateway unready"
    );
    let https = gw
        .listener_address(&listeners[&443].name)
        .expect("443 bound");
    let (status, body, presented) = https_get(https, "a.example.com", &server_ca.pem, None)
        .await
        .expect("the host with a credential is served");
    assert_eq!(
        (status, body.as_str(), presented.as_str()),
        (200, "web", "a.example.com")
    );
    let missing = https_get(https, "b.example.com", &server_ca.pem, None).await;
    assert!(
        missing.is_err(),
        "the host without its credential must fail its handshake: {missing:?}"
    );
}
