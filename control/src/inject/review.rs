//! AdmissionReview `admission.k8s.io/v1`, the parts a mutating webhook
//! reads and writes (the API server ignores fields it does not know, and so
//! do we on input).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// The object as it would be stored (for CREATE).
    #[serde(default)]
    pub object: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// base64 of the JSON Patch (RFC 6902) document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl AdmissionResponse {
    pub fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_string(),
            allowed: true,
            status: None,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        }
    }

    pub fn deny(uid: &str, code: u16, message: String) -> Self {
        Self {
            allowed: false,
            status: Some(Status {
                code: Some(code),
                message: Some(message),
            }),
            ..Self::allow(uid)
        }
    }

    pub fn with_patch(mut self, patch: &json_patch::Patch) -> Result<Self, serde_json::Error> {
        self.patch_type = Some("JSONPatch".into());
        self.patch = Some(STANDARD.encode(serde_json::to_vec(patch)?));
        Ok(self)
    }

    /// The decoded JSON Patch, if any.
    pub fn decoded_patch(&self) -> Option<json_patch::Patch> {
        let raw = STANDARD.decode(self.patch.as_ref()?).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

impl AdmissionReview {
    pub fn answer(response: AdmissionResponse) -> Self {
        Self {
            api_version: API_VERSION.into(),
            kind: "AdmissionReview".into(),
            request: None,
            response: Some(response),
        }
    }
}
