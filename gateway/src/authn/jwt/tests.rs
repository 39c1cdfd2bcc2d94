//! Requirement semantics and request edits, with Ed25519 and P-256 keys
//! generated per test (RSA and the full proxy path: tests/authn.rs).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtClaimToHeader, JwtProvider,
    JwtRequirement, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::google::protobuf::Empty;
use http::{Request, StatusCode};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::config::from_proto;
use super::*;
use crate::authn::VerifiedJwt;
use crate::config::Ctx;

const ISS: &str = "testing@isthmus.example";

struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn ed25519(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    Signer {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        key: EncodingKey::from_ed_der(&kp.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw())}),
    }
}

fn p256(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256 key");
    let raw = kp.public_key_raw();
    Signer {
        alg: Algorithm::ES256,
        kid: kid.into(),
        key: EncodingKey::from_ec_der(&kp.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65])}),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signer {
    fn token(&self, claims: serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        encode(&h, &claims, &self.key).expect("sign")
    }

    fn valid(&self) -> String {
        self.token(
            json!({"iss": ISS, "sub": "alice", "aud": "httpbin", "exp": now() + 600,
            "group": "admins", "nested": {"team": "blue"}}),
        )
    }
}

fn provider(signers: &[&Signer]) -> JwtProvider {
    let keys: Vec<_> = signers.iter().map(|s| s.jwk.clone()).collect();
    JwtProvider {
        issuer: ISS.into(),
        jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                json!({ "keys": keys }).to_string(),
            )),
            ..Default::default()
        })),
        forward_payload_header: "x-jwt-payload".into(),
        claim_to_headers: vec![
            JwtClaimToHeader {
                header_name: "x-jwt-group".into(),
                claim_name: "group".into(),
                ..Default::default()
            },
            JwtClaimToHeader {
                header_name: "x-jwt-team".into(),
                claim_name: "nested.team".into(),
                ..Default::default()
            },
        ],
        payload_in_metadata: ISS.into(),
        ..Default::default()
    }
}

fn req(r: RequiresType) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(r),
    }
}

/// Istio's shape: one rule for `/`, the provider or a missing token.
fn istio_like(p: JwtProvider, allow_missing: bool) -> JwtAuthn {
    let requires = if allow_missing {
        req(RequiresType::RequiresAny(JwtRequirementOrList {
            requirements: vec![
                req(RequiresType::ProviderName("origins-0".into())),
                req(RequiresType::AllowMissing(Empty {})),
            ],
        }))
    } else {
        req(RequiresType::ProviderName("origins-0".into()))
    };
    let pb = JwtAuthentication {
        providers: [("origins-0".to_string(), p)].into(),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(requires)),
        }],
        ..Default::default()
    };
    from_proto(&Ctx::new("Listener", "test"), "jwt", &pb).expect("valid config")
}

fn run(jwt: &JwtAuthn, headers: &[(&str, &str)]) -> (Result<(), StatusCode>, Request<()>) {
    run_path(jwt, "/get", headers)
}

fn run_path(
    jwt: &JwtAuthn,
    path: &str,
    headers: &[(&str, &str)],
) -> (Result<(), StatusCode>, Request<()>) {
    let mut b = Request::builder().uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut r = b.body(()).expect("request");
    let out = authenticate(jwt, &mut r, "httpbin", "http").map_err(|resp| resp.status());
    (out, r)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn valid_tokens_verify_and_publish_claims() {
    let (ed, ec) = (ed25519("ed"), p256("ec"));
    let jwt = istio_like(provider(&[&ed, &ec]), true);
    for s in [&ed, &ec] {
        let (out, r) = run(
            &jwt,
            &[
                ("authorization", &bearer(&s.valid())),
                ("x-jwt-group", "spoofed"),
            ],
        );
        assert_eq!(out, Ok(()), "{:?}", s.alg);
        let v = r.extensions().get::<VerifiedJwt>().expect("verified");
        assert_eq!(v.principal, format!("{ISS}/alice"));
        assert_eq!(v.claims["group"], "admins");
        assert_eq!(r.headers()["x-jwt-group"], "admins");
        assert_eq!(r.headers()["x-jwt-team"], "blue");
        let payload = URL_SAFE_NO_PAD
            .decode(r.headers()["x-jwt-payload"].as_bytes())
            .expect("base64url payload");
        let payload: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(payload["sub"], "alice");
        // forward: false (the default) strips the token before the app.
        assert!(r.headers().get("authorization").is_none());
    }
}

#[test]
fn missing_passes_only_with_allow_missing_and_spoofed_headers_are_dropped() {
    let ed = ed25519("ed");
    let jwt = istio_like(provider(&[&ed]), true);
    let (out, r) = run(&jwt, &[("x-jwt-payload", "e30"), ("x-jwt-group", "admins")]);
    assert_eq!(out, Ok(()));
    assert!(r.extensions().get::<VerifiedJwt>().is_none());
    assert!(r.headers().get("x-jwt-payload").is_none());
    assert!(r.headers().get("x-jwt-group").is_none());

    let strict = istio_like(provider(&[&ed]), false);
    assert_eq!(run(&strict, &[]).0, Err(StatusCode::UNAUTHORIZED));
}

#[test]
fn bad_tokens_are_rejected_as_envoy_does() {
    let ed = ed25519("ed");
    let other = ed25519("ed");
    let jwt = istio_like(provider(&[&ed]), true);
    let expired = ed.token(json!({"iss": ISS, "sub": "a", "exp": now() - 3600}));
    let early = ed.token(json!({"iss": ISS, "sub": "a", "nbf": now() + 3600}));
    let wrong_iss = ed.token(json!({"iss": "someone@else", "sub": "a"}));
    let foreign_key = other.valid();
    let good = ed.valid();
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(
        json!({"iss": ISS, "sub": "mallory", "aud": "httpbin", "exp": now() + 600}).to_string(),
    );
    parts[1] = &forged;
    let tampered = parts.join(".");
    for (what, token, status) in [
        ("expired", expired, StatusCode::UNAUTHORIZED),
        ("not yet valid", early, StatusCode::UNAUTHORIZED),
        ("wrong issuer", wrong_iss, StatusCode::UNAUTHORIZED),
        (
            "signed by another key",
            foreign_key,
            StatusCode::UNAUTHORIZED,
        ),
        ("tampered payload", tampered, StatusCode::UNAUTHORIZED),
        ("garbage", "not-a-jwt".to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let (out, r) = run(&jwt, &[("authorization", &bearer(&token))]);
        assert_eq!(out, Err(status), "{what}");
        assert!(r.extensions().get::<VerifiedJwt>().is_none(), "{what}");
    }
    // Within the default 60 s clock skew an expired token still passes.
    let just_expired = ed.token(json!({"iss": ISS, "sub": "a", "exp": now() - 5}));
    assert_eq!(
        run(&jwt, &[("authorization", &bearer(&just_expired))]).0,
        Ok(())
    );
}

#[test]
fn audiences_and_locations() {
    let ed = ed25519("ed");
    let mut p = provider(&[&ed]);
    p.audiences = vec!["httpbin".into(), "other".into()];
    p.from_headers = vec![
        envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtHeader {
            name: "x-token".into(),
            value_prefix: "Token ".into(),
        },
    ];
    p.from_params = vec!["jwt".into()];
    p.forward = true;
    let jwt = istio_like(p, true);
    let good = ed.valid();
    let (out, r) = run(&jwt, &[("x-token", &format!("Token {good}"))]);
    assert_eq!(out, Ok(()));
    assert!(
        r.headers().contains_key("x-token"),
        "forward keeps the token"
    );
    assert_eq!(
        run_path(&jwt, &format!("/get?a=1&jwt={good}"), &[]).0,
        Ok(())
    );
    // The default Authorization location is not used once locations are set.
    let (out, r) = run(&jwt, &[("authorization", &bearer(&good))]);
    assert_eq!(out, Ok(()));
    assert!(r.extensions().get::<VerifiedJwt>().is_none());
    let wrong_aud = ed.token(json!({"iss": ISS, "sub": "a", "aud": ["nobody"]}));
    assert_eq!(
        run(&jwt, &[("x-token", &format!("Token {wrong_aud}"))]).0,
        Err(StatusCode::FORBIDDEN)
    );
}

#[test]
fn config_errors_name_the_field() {
    let ctx = Ctx::new("Listener", "l");
    let mut p = provider(&[&ed25519("k")]);
    p.jwks_source_specifier = Some(JwksSourceSpecifier::LocalJwks(DataSource {
        specifier: Some(data_source::Specifier::InlineString("{\"keys\":[]}".into())),
        ..Default::default()
    }));
    let pb = JwtAuthentication {
        providers: [("p".to_string(), p)].into(),
        ..Default::default()
    };
    let e = from_proto(&ctx, "jwt", &pb).expect_err("empty JWKS");
    assert_eq!(e.field, "jwt.providers[\"p\"].local_jwks");
    let pb = JwtAuthentication {
        providers: [("p".to_string(), provider(&[&ed25519("k")]))].into(),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(req(RequiresType::ProviderName(
                "nope".into(),
            )))),
        }],
        ..Default::default()
    };
    let e = from_proto(&ctx, "jwt", &pb).expect_err("unknown provider");
    assert_eq!(e.field, "jwt.rules[0].requires.provider_name");
}
