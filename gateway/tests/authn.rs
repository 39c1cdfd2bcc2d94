//! JWT authentication, RBAC on the verified principal, and local rate
//! limiting through a real gateway in front of a real HTTP backend. Keys
//! (RSA 2048, P-256, Ed25519) are generated per run; none is committed.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ::http::{Method, Request, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource, RuntimeFractionalPercent};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, Permission, Policy, Principal, Rbac as RbacRules,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route_match::PathSpecifier, HeaderMatcher, RouteMatch,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtProvider, JwtRequirement,
    JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    metadata_matcher::path_segment, metadata_matcher::PathSegment, string_matcher::MatchPattern,
    value_matcher, MetadataMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{
    fractional_percent::DenominatorType, FractionalPercent, TokenBucket,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, Empty, UInt32Value};
use envoy_types::util::pack_any;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use support::ads::ScriptedAds;
use support::http::{prefix_route, route_config, to_cluster};
use support::resources::*;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const ISS: &str = "testing@secure.isthmus.example";

struct Signer {
    alg: Algorithm,
    kid: &'static str,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn rsa() -> Signer {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let der = key.to_pkcs1_der().expect("PKCS#1 DER");
        Signer {
            alg: Algorithm::RS256,
            kid: "rsa-1",
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig",
                "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be())}),
        }
    }

    fn p256() -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256");
        let raw = kp.public_key_raw().to_vec();
        Signer {
            alg: Algorithm::ES256,
            kid: "ec-1",
            key: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": "ec-1",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}),
        }
    }

    fn ed25519() -> Signer {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519");
        Signer {
            alg: Algorithm::EdDSA,
            kid: "ed-1",
            key: EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
                "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw())}),
        }
    }

    fn token(&self, claims: Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.to_string());
        encode(&h, &claims, &self.key).expect("sign")
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A backend that answers 200 with the request it saw as JSON.
struct EchoBackend {
    addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl EchoBackend {
    async fn start() -> Self {
        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = sock.accept().await {
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
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
                            let body = json!({"method": req.method().as_str(), "headers": headers});
                            Ok::<_, Infallible>(::http::Response::new(Full::new(Bytes::from(
                                body.to_string(),
                            ))))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            _tasks: tasks,
        }
    }
}

fn hf(name: &str, any: Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

/// Istio's translation of RequestAuthentication `jwt-example` (one
/// jwtRule, inline keys): provider `origins-0`, `requires_any` of it or
/// a missing token, claims published under the issuer.
fn jwt_filter(jwks: &Value) -> HttpFilter {
    let provider = JwtProvider {
        issuer: ISS.into(),
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(jwks.to_string())),
            ..Default::default()
        })),
        forward_payload_header: "x-jwt-payload".into(),
        payload_in_metadata: ISS.into(),
        ..Default::default()
    };
    let req = |r| JwtRequirement {
        requires_type: Some(r),
    };
    let cfg = JwtAuthentication {
        providers: [("origins-0".to_string(), provider)].into(),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(req(RequiresType::RequiresAny(
                JwtRequirementOrList {
                    requirements: vec![
                        req(RequiresType::ProviderName("origins-0".into())),
                        req(RequiresType::AllowMissing(Empty {})),
                    ],
                },
            )))),
        }],
        ..Default::default()
    };
    hf("envoy.filters.http.jwt_authn", pack_any(cfg))
}

/// Istio's translation of AuthorizationPolicy `allow-get`: ALLOW GET from
/// any request principal.
#[allow(deprecated)]
fn allow_get_filter() -> HttpFilter {
    let method_get = Permission {
        rule: Some(permission::Rule::Header(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("GET".into())),
                ignore_case: false,
            })),
            ..Default::default()
        })),
    };
    let any_request_principal = Principal {
        identifier: Some(principal::Identifier::Metadata(MetadataMatcher {
            filter: "istio_authn".into(),
            path: vec![PathSegment {
                segment: Some(path_segment::Segment::Key("request.auth.principal".into())),
            }],
            value: Some(ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                        regex: ".+".into(),
                        ..Default::default()
                    })),
                    ignore_case: false,
                })),
            }),
            invert: false,
        })),
    };
    let rules = RbacRules {
        action: 0, // ALLOW
        policies: [(
            "ns[foo]-policy[allow-get]-rule[0]".to_string(),
            Policy {
                permissions: vec![method_get],
                principals: vec![any_request_principal],
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    hf(
        "envoy.filters.http.rbac",
        pack_any(Rbac {
            rules: Some(rules),
            ..Default::default()
        }),
    )
}

fn percent(n: u32) -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: n,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    })
}

fn ratelimit(max: u32, fill: Duration) -> LocalRateLimit {
    LocalRateLimit {
        stat_prefix: "http_local_rate_limiter".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: max,
            tokens_per_fill: Some(UInt32Value { value: max }),
            fill_interval: Some(PbDuration {
                seconds: fill.as_secs() as i64,
                nanos: fill.subsec_nanos() as i32,
            }),
        }),
        filter_enabled: percent(100),
        filter_enforced: percent(100),
        enable_x_ratelimit_headers: 1, // DRAFT_VERSION_03
        ..Default::default()
    }
}

fn listener(filters: Vec<HttpFilter>, routes: RouteSpecifier) -> Listener {
    let mut http_filters = filters;
    http_filters.push(hf("envoy.filters.http.router", pack_any(Router::default())));
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: "inbound_0.0.0.0_8000".into(),
        route_specifier: Some(routes),
        http_filters,
        ..Default::default()
    };
    Listener {
        name: "inbound".into(),
        address: Some(addr(any_port())),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn start(
    ads: &ScriptedAds,
    backend: SocketAddr,
    l: Listener,
) -> (isthmus_gateway::Gateway, SocketAddr) {
    ads.set(CDS, vec![named("app", eds_cluster("app"))]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[backend])]))]);
    ads.set(LDS, vec![named("inbound", l)]);
    let gw = gateway(ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let at = gw.listener_address("inbound").expect("bound");
    (gw, at)
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn call(
    c: &Client,
    at: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, ::http::HeaderMap, String) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{at}{path}"))
        .header("host", "httpbin.foo");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = c
        .request(b.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("request through the gateway");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn inline_routes() -> RouteSpecifier {
    RouteSpecifier::RouteConfig(route_config(
        "inbound|8000||",
        &["*"],
        vec![prefix_route("default", "/", to_cluster("app"))],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_es256_eddsa_and_istio_failure_semantics() {
    let signers = [Signer::rsa(), Signer::p256(), Signer::ed25519()];
    let jwks = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
    let backend = EchoBackend::start().await;
    let ads = ScriptedAds::start().await;
    let (_gw, at) = start(
        &ads,
        backend.addr,
        listener(vec![jwt_filter(&jwks)], inline_routes()),
    )
    .await;
    let c = support::http::client();

    for s in &signers {
        let token = s.token(json!({"iss": ISS, "sub": "alice", "exp": now() + 600}));
        let (status, _, body) = call(&c, at, Method::GET, "/headers", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{:?}: {body}", s.alg);
        let seen: Value = serde_json::from_str(&body).expect("echo JSON");
        assert!(
            seen["headers"].get("authorization").is_none(),
            "token forwarded: {body}"
        );
        let payload = seen["headers"]["x-jwt-payload"]
            .as_str()
            .expect("payload header");
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
                .expect("payload JSON");
        assert_eq!(payload["sub"], "alice");
    }

    // Istio: no token passes authentication (authorization decides).
    let (status, _, _) = call(&c, at, Method::GET, "/headers", None).await;
    assert_eq!(status, StatusCode::OK);

    let s = &signers[0];
    let expired = s.token(json!({"iss": ISS, "sub": "alice", "exp": now() - 3600}));
    let wrong_issuer = s.token(json!({"iss": "other@example", "sub": "alice"}));
    let good = s.token(json!({"iss": ISS, "sub": "alice", "exp": now() + 600}));
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] =
        URL_SAFE_NO_PAD.encode(json!({"iss": ISS, "sub": "root", "exp": now() + 600}).to_string());
    let tampered = parts.join(".");
    for (what, token, body) in [
        ("expired", expired, "Jwt is expired"),
        ("wrong issuer", wrong_issuer, "Jwt issuer is not configured"),
        ("tampered", tampered, "Jwt verification fails"),
    ] {
        let (status, headers, got) = call(&c, at, Method::GET, "/headers", Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {got}");
        assert_eq!(got, body, "{what}");
        let challenge = headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm="),
            "{what}: {challenge}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_get_needs_a_request_principal() {
    let signer = Signer::ed25519();
    let jwks = json!({"keys": [signer.jwk.clone()]});
    let backend = EchoBackend::start().await;
    let ads = ScriptedAds::start().await;
    let l = listener(vec![jwt_filter(&jwks), allow_get_filter()], inline_routes());
    let (_gw, at) = start(&ads, backend.addr, l).await;
    let c = support::http::client();
    let token = signer.token(json!({"iss": ISS, "sub": "alice", "exp": now() + 600}));

    let (status, _, body) = call(&c, at, Method::GET, "/ip", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = call(&c, at, Method::POST, "/post", Some(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "POST is not allowed: {body}");
    // Missing token: authentication passes, authorization has no principal.
    let (status, _, body) = call(&c, at, Method::GET, "/ip", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let expired = signer.token(json!({"iss": ISS, "sub": "alice", "exp": now() - 3600}));
    let (status, _, _) = call(&c, at, Method::GET, "/ip", Some(&expired)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_answers_429_then_refills() {
    let backend = EchoBackend::start().await;
    let ads = ScriptedAds::start().await;
    // Listener-wide bucket of 3 per 1 s; route /strict overrides it with 1 per 1 s.
    let mut strict = prefix_route("strict", "/strict", to_cluster("app"));
    strict.typed_per_filter_config.insert(
        "envoy.filters.http.local_ratelimit".into(),
        pack_any(ratelimit(1, Duration::from_secs(1))),
    );
    let routes = RouteSpecifier::RouteConfig(route_config(
        "inbound|8000||",
        &["*"],
        vec![strict, prefix_route("default", "/", to_cluster("app"))],
    ));
    let filter = hf(
        "envoy.filters.http.local_ratelimit",
        pack_any(ratelimit(3, Duration::from_secs(1))),
    );
    let (_gw, at) = start(&ads, backend.addr, listener(vec![filter], routes)).await;
    let c = support::http::client();

    // The bucket may refill between requests if the test is slow; retry the
    // whole burst from a fresh interval until it is observed in one interval.
    let deadline = Instant::now() + WAIT;
    loop {
        let started = Instant::now();
        let mut statuses = Vec::new();
        let mut limited = None;
        for _ in 0..4 {
            let (s, h, body) = call(&c, at, Method::GET, "/get", None).await;
            statuses.push(s);
            if s == StatusCode::TOO_MANY_REQUESTS {
                limited = Some((h, body));
            }
        }
        if started.elapsed() < Duration::from_millis(900) {
            let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
            assert!(ok <= 3, "more than the bucket admitted: {statuses:?}");
            if let Some((h, body)) = limited {
                assert_eq!(body, "local_rate_limited");
                assert_eq!(h["x-ratelimit-limit"], "3");
                assert_eq!(h["x-ratelimit-remaining"], "0");
                let reset: u64 = h["x-ratelimit-reset"]
                    .to_str()
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .expect("reset seconds");
                assert!(reset <= 1, "reset {reset}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "never saw a 429: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Refill: within the deadline a request passes again, with the headers.
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, h, _) = call(&c, at, Method::GET, "/get", None).await;
        if s == StatusCode::OK {
            assert_eq!(h["x-ratelimit-limit"], "3");
            break;
        }
        assert!(Instant::now() < deadline, "bucket never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The per-route bucket of 1 is separate from the listener's.
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, ha, _) = call(&c, at, Method::GET, "/strict", None).await;
        let (b, hb, _) = call(&c, at, Method::GET, "/strict", None).await;
        if a == StatusCode::OK && b == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(ha["x-ratelimit-limit"], "1");
            assert_eq!(hb["x-ratelimit-limit"], "1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "per-route limit not seen: {a} {b}"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}
