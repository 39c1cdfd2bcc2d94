//! Security end to end: the seed examples' PeerAuthentication (mesh-wide
//! STRICT, one port PERMISSIVE), RequestAuthentication (jwksUri served here
//! over HTTP and resolved by the control plane's fetcher) and
//! AuthorizationPolicy `allow-get` → the control plane's translation for the
//! httpbin sidecar → a real gateway with a workload certificate, called in
//! plaintext directly and over mTLS through a second (client) gateway.

mod support;
mod translate_support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ::http::{Method, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, Proxy, TypeUrl};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use prost::Message;
use serde_json::{json, Value};
use support::ads::ScriptedAds;
use support::pki::Ca;
use support::resources::*;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

const ISS: &str = "testing@secure.istio.io";
const SERVER_ID: &str = "spiffe://cluster.local/ns/foo/sa/httpbin";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bar/sa/sleep";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves `/jwks.json` from the watch; answers anything else with a JSON
/// echo of the request headers (the application behind the sidecar).
async fn http_server(jwks: watch::Receiver<String>) -> (SocketAddr, JoinSet<()>) {
    let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = sock.local_addr().expect("addr");
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((s, _)) = sock.accept().await {
            let jwks = jwks.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = if req.uri().path() == "/jwks.json" {
                        jwks.borrow().clone()
                    } else {
                        let headers: serde_json::Map<String, Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    Value::String(v.to_str().unwrap_or("").into()),
                                )
                            })
                            .collect();
                        json!({"headers": headers}).to_string()
                    };
                    async move {
                        Ok::<_, Infallible>(::http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    (addr, tasks)
}

fn config(yaml: &str) -> ConfigSnapshot {
    translate_support::config("httpbin.yaml", yaml)
}

fn httpbin_proxy() -> Proxy {
    Proxy::from_node(Some(&translate_support::httpbin_sidecar_node())).expect("proxy node")
}

/// The translated inbound listeners by workload port, rebound to port 0.
fn inbound_listeners(inputs: &Inputs) -> BTreeMap<u32, Listener> {
    let proxy = httpbin_proxy();
    let mut out = BTreeMap::new();
    for r in generate(
        inputs,
        &proxy,
        ProxyFlavor::Envoy,
        TypeUrl::Listener,
        &Names::All,
    ) {
        let mut l = Listener::decode(r.body.value.as_slice()).expect("listener");
        let Some(address::Address::SocketAddress(sa)) =
            l.address.as_mut().and_then(|a| a.address.as_mut())
        else {
            continue;
        };
        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
            continue;
        };
        if port == 8000 || port == 9000 {
            if l.name.starts_with("outbound") || sa.address != "127.0.0.1" {
                continue;
            }
            sa.port_specifier = Some(PortSpecifier::PortValue(0));
            out.insert(port, l);
        }
    }
    out
}

async fn call(
    at: SocketAddr,
    method: Method,
    token: Option<&str>,
) -> Result<(StatusCode, String), String> {
    let c = support::http::client();
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{at}/get"))
        .header("host", "httpbin.foo.svc.cluster.local");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(WAIT, c.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_policies_end_to_end_through_control_translation() {
    init();
    // Keys and the JWKS the "issuer" publishes.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let key = EncodingKey::from_ed_der(&kp.serialize_der());
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
        "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw())}]})
    .to_string();
    let sign = |claims: Value| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("k1".into());
        encode(&h, &claims, &key).expect("sign")
    };
    let (_jwks_tx, jwks_rx) = watch::channel(jwks);
    let (app, _app_tasks) = http_server(jwks_rx).await;

    // Control plane: config, jwksUri resolution, translation.
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/authn/httpbin.yaml"),
    )
    .expect("fixture");
    let uri = format!("http://{app}/jwks.json");
    let snapshot = Arc::new(config(&fixture.replace("JWKS_URI", &uri)));
    let (_config_tx, config_rx) = watch::channel(snapshot.clone());
    let (resolved_tx, mut resolved_rx) = watch::channel(Arc::default());
    let fetcher = tokio::spawn(isthmus_control::app::jwks::run(
        config_rx,
        resolved_tx,
        isthmus_control::app::jwks::JwksOptions::default(),
    ));
    let fetched = tokio::time::timeout(WAIT, resolved_rx.wait_for(|m| m.contains_key(&uri)))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(fetched, "the control plane never fetched {uri}");
    let resolved = resolved_rx.borrow().clone();
    fetcher.abort();
    let inputs = Inputs::new(
        snapshot,
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    )
    .with_jwks(resolved);
    let listeners = inbound_listeners(&inputs);
    assert_eq!(listeners.len(), 2, "inbound listeners for 8000 and 9000");

    // The httpbin sidecar: translated listeners, inbound clusters to the app.
    let root = Ca::root();
    let inter = root.intermediate("cluster-a");
    let ads = ScriptedAds::start().await;
    ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    let clusters = ["inbound|8000||", "inbound|9000||"];
    ads.set(
        CDS,
        clusters.iter().map(|c| named(c, eds_cluster(c))).collect(),
    );
    ads.set(
        EDS,
        clusters
            .iter()
            .map(|c| named(c, cla(c, &[(0, &[app])])))
            .collect(),
    );
    ads.set(
        LDS,
        listeners
            .values()
            .map(|l| named(&l.name, l.clone()))
            .collect(),
    );
    let (_stx, server_cert) = inter.workload(&root, SERVER_ID);
    let server = gateway(&ads, "sidecar", Some(server_cert)).await;
    assert!(server.wait_ready(WAIT).await, "httpbin sidecar not ready");
    let strict = server
        .listener_address(&listeners[&8000].name)
        .expect("8000 bound");
    let permissive = server
        .listener_address(&listeners[&9000].name)
        .expect("9000 bound");

    // A client sidecar originating mTLS (TCP proxy) to each port.
    let ads_c = ScriptedAds::start().await;
    ads_c.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    let sni = |p: u16| format!("outbound_.{p}_._.httpbin.foo.svc.cluster.local");
    ads_c.set(
        CDS,
        vec![
            named("to-8000", mtls_cluster("to-8000", &sni(8000), &[SERVER_ID])),
            named("to-9000", mtls_cluster("to-9000", &sni(9000), &[SERVER_ID])),
        ],
    );
    ads_c.set(
        EDS,
        vec![
            named("to-8000", cla("to-8000", &[(0, &[strict])])),
            named("to-9000", cla("to-9000", &[(0, &[permissive])])),
        ],
    );
    ads_c.set(
        LDS,
        vec![
            named(
                "out-8000",
                outbound_listener("out-8000", any_port(), "to-8000"),
            ),
            named(
                "out-9000",
                outbound_listener("out-9000", any_port(), "to-9000"),
            ),
        ],
    );
    let (_ctx, client_cert) = inter.workload(&root, CLIENT_ID);
    let client = gateway(&ads_c, "sidecar", Some(client_cert)).await;
    assert!(client.wait_ready(WAIT).await, "client sidecar not ready");
    let mtls_8000 = client.listener_address("out-8000").expect("bound");
    let mtls_9000 = client.listener_address("out-9000").expect("bound");

    let good = sign(json!({"iss": ISS, "sub": "alice", "aud": "httpbin.foo", "exp": now() + 600}));
    let expired =
        sign(json!({"iss": ISS, "sub": "alice", "aud": "httpbin.foo", "exp": now() - 3600}));
    let wrong_aud = sign(json!({"iss": ISS, "sub": "alice", "aud": "other", "exp": now() + 600}));

    // STRICT: plaintext is refused; mTLS carries the JWT and RBAC decisions.
    let plain = call(strict, Method::GET, Some(&good)).await;
    assert!(
        plain.is_err(),
        "plaintext to a STRICT port must fail: {plain:?}"
    );
    let (s, body) = call(mtls_8000, Method::GET, Some(&good))
        .await
        .expect("GET");
    assert_eq!(s, StatusCode::OK, "{body}");
    let seen: Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(seen["headers"]["x-jwt-sub"], "alice", "{body}");
    assert!(seen["headers"].get("authorization").is_none(), "{body}");
    let (s, _) = call(mtls_8000, Method::POST, Some(&good))
        .await
        .expect("POST");
    assert_eq!(s, StatusCode::FORBIDDEN, "POST is not in allow-get");
    let (s, _) = call(mtls_8000, Method::GET, None).await.expect("no token");
    assert_eq!(s, StatusCode::FORBIDDEN, "no request principal");
    let (s, _) = call(mtls_8000, Method::GET, Some(&expired))
        .await
        .expect("expired");
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(mtls_8000, Method::GET, Some(&wrong_aud))
        .await
        .expect("aud");
    assert_eq!(s, StatusCode::FORBIDDEN, "audience not allowed");

    // PERMISSIVE on 9000: plaintext and mTLS on the same port.
    let (s, body) = call(permissive, Method::GET, Some(&good))
        .await
        .expect("plaintext");
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = call(mtls_9000, Method::GET, Some(&good))
        .await
        .expect("mTLS");
    assert_eq!(s, StatusCode::OK, "{body}");

    // The ServiceEntry's rate-limit annotation became a local_ratelimit
    // filter: its bucket size shows in the response headers.
    let auth = format!("Bearer {good}");
    let (s, headers, _) = support::http::get(
        &support::http::client(),
        permissive,
        "httpbin.foo.svc.cluster.local",
        "/get",
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["x-ratelimit-limit"], "2000");

    client.shutdown().await;
    server.shutdown().await;
}
