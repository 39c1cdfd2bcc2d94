//! The filter's request path: pick the rule, evaluate its requirement, then
//! either answer 401/403 or edit the request (remove or keep the token,
//! payload and claim headers) and attach [`VerifiedJwt`].

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use http::{HeaderValue, Method, Request, Response};
use serde_json::Value;

use super::config::{JwtAuthn, Location};
use super::verify::{evaluate, Failure, RequestView, Verified};
use crate::authn::VerifiedJwt;
use crate::http::respond::local;
use crate::http::router::{matches, RequestMeta};
use crate::http::{Body, Flags};

/// Runs `jwt_authn` on a request. `Err` is the local reply to send instead
/// of routing it (boxed: replies are rare, the `Ok` path stays small).
pub fn authenticate<B>(
    jwt: &JwtAuthn,
    req: &mut Request<B>,
    authority: &str,
    scheme: &str,
) -> Result<(), Box<Response<Body>>> {
    // Headers this filter produces are never taken from the client, so a
    // request without a token cannot pose as one with verified claims.
    for p in &jwt.providers {
        if let Some(h) = &p.forward_payload_header {
            req.headers_mut().remove(h);
        }
        for (h, _) in &p.claim_to_headers {
            req.headers_mut().remove(h);
        }
    }
    if jwt.bypass_cors_preflight && is_cors_preflight(req) {
        return Ok(());
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let outcome = {
        let meta = RequestMeta {
            method: req.method(),
            authority,
            path_and_query: &path_and_query,
            scheme,
            headers: req.headers(),
        };
        let Some(rule) = jwt.rules.iter().find(|r| matches(&r.matcher, &meta)) else {
            return Ok(());
        };
        let view = RequestView {
            headers: req.headers(),
            query: req.uri().query(),
        };
        evaluate(&rule.requirement, &jwt.providers, &view)
    };
    match outcome {
        Ok(verified) => {
            apply(req, &verified);
            Ok(())
        }
        Err(failure) => {
            tracing::debug!(%failure, authority, path = %path_and_query, "JWT rejected");
            Err(Box::new(reject(
                &failure,
                scheme,
                authority,
                &path_and_query,
            )))
        }
    }
}

fn is_cors_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(http::header::ORIGIN)
        && req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn reject(f: &Failure, scheme: &str, authority: &str, path_and_query: &str) -> Response<Body> {
    let mut resp = local(f.status(), &f.to_string(), &Flags::default());
    let path = path_and_query.split('?').next().unwrap_or("/");
    let challenge =
        format!("Bearer realm=\"{scheme}://{authority}{path}\", error=\"invalid_token\"");
    if f.status() == http::StatusCode::UNAUTHORIZED {
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
    }
    resp
}

fn apply<B>(req: &mut Request<B>, verified: &[Verified]) {
    for v in verified {
        let p = &v.provider;
        if !p.forward {
            if let Location::Header { name, .. } = &v.found.location {
                req.headers_mut().remove(name.as_str());
            }
        }
        if let Some(h) = &p.forward_payload_header {
            let payload = if p.pad_forward_payload_header {
                match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&v.payload_b64) {
                    Ok(raw) => URL_SAFE.encode(raw),
                    Err(_) => v.payload_b64.clone(),
                }
            } else {
                v.payload_b64.clone()
            };
            if let Ok(val) = HeaderValue::from_str(&payload) {
                req.headers_mut().insert(h.clone(), val);
            }
        }
        for (h, claim) in &p.claim_to_headers {
            let text = match lookup_claim(&v.claims, claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                _ => continue,
            };
            if let Ok(val) = HeaderValue::from_str(&text) {
                req.headers_mut().insert(h.clone(), val);
            }
        }
    }
    if let Some(first) = verified.first() {
        let claims = &first.claims;
        let part = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default();
        req.extensions_mut().insert(VerifiedJwt {
            principal: format!("{}/{}", part("iss"), part("sub")),
            claims: claims.clone(),
        });
    }
}

/// A claim by name; a dotted name reaches into nested objects (Istio's
/// `outputClaimToHeaders` accepts `a.b`).
fn lookup_claim<'v>(claims: &'v Value, name: &str) -> Option<&'v Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(claims, |v, k| v.get(k))
}
