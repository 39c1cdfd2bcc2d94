//! Shared by the injector's tests: the fixture config, loading
//! AdmissionReview fixtures, golden responses and applying patches.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use isthmus_control::inject::review::{AdmissionResponse, AdmissionReview};
use isthmus_control::inject::{self, InjectConfig, Interception};
use serde_json::Value;

pub const ROOT_PEM: &str = include_str!("../fixtures/install/root-cert.pem");

pub fn config() -> InjectConfig {
    InjectConfig {
        image: "registry.example.org/isthmus:1.0.0".into(),
        cluster_id: "us-east".into(),
        network: "net-east".into(),
        locality: "us-east/us-east-1a".into(),
        trust_domain: "example.org".into(),
        root_cert_pem: ROOT_PEM.into(),
        default_interception: Interception::None,
    }
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission")
}

pub fn load(name: &str) -> AdmissionReview {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.request.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn respond(review: &AdmissionReview) -> AdmissionResponse {
    let out = inject::review(&config(), review).unwrap();
    assert_eq!(out.api_version, "admission.k8s.io/v1");
    assert_eq!(out.kind, "AdmissionReview");
    let r = out.response.unwrap();
    assert_eq!(
        r.uid,
        review.request.as_ref().unwrap().uid,
        "uid must echo the request"
    );
    r
}

/// The response with its base64 patch shown decoded, compared with
/// `<name>.response.json` (ISTHMUS_UPDATE_GOLDEN=1 rewrites it).
pub fn golden(name: &str, r: &AdmissionResponse) {
    let mut v = serde_json::to_value(r).unwrap();
    if let Some(p) = r.decoded_patch() {
        v["patch"] = serde_json::to_value(p).unwrap();
    }
    let text = format!("{}\n", serde_json::to_string_pretty(&v).unwrap());
    let path = fixtures().join(format!("{name}.response.json"));
    if std::env::var("ISTHMUS_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing; run with ISTHMUS_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert!(
        want == text,
        "{name}: response differs from {}:\n{text}",
        path.display()
    );
}

/// Applies the response's patch to the request's object.
pub fn patched(review: &AdmissionReview, r: &AdmissionResponse) -> Value {
    let mut obj = review.request.as_ref().unwrap().object.clone().unwrap();
    let p = r.decoded_patch().expect("a patch");
    assert_eq!(r.patch_type.as_deref(), Some("JSONPatch"));
    json_patch::patch(&mut obj, &p).unwrap();
    obj
}

pub fn again(review: &AdmissionReview, pod: Value) -> AdmissionResponse {
    let mut next = review.clone();
    next.request.as_mut().unwrap().object = Some(pod);
    respond(&next)
}
