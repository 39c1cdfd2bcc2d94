//! Kubernetes core/v1 `Secret`, for Gateway `credentialName`: type
//! `kubernetes.io/tls` (or generic/Opaque) with `tls.crt`, `tls.key` and
//! optionally `ca.crt`; a `NAME-cacert` Secret may carry the client CA
//! (`ca.crt`, or `cacert` as Istio also accepts).
//!
//! Values are kept as written (base64 under `data`, text under
//! `stringData`) so a file round-trips; they are decoded and checked when
//! the document is read, so a malformed Secret is refused before it can
//! replace the last good one. `Debug` never prints them.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::ObjectMeta;

pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_PRIVATE_KEY: &str = "tls.key";
pub const CA_CERT_KEY: &str = "ca.crt";
/// Istio also reads the CA of a `NAME-cacert` Secret under this key.
pub const CA_CERT_ALT_KEY: &str = "cacert";

/// A core/v1 Secret as a configuration file or the API server holds it.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    /// Base64 values, as Kubernetes stores them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Plain text values (win over `data`, as the API server merges them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
    /// Written by `kubectl get -o yaml` in some versions; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_yaml_ng::Value>,
}

impl std::fmt::Debug for SecretObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        f.debug_struct("SecretObject")
            .field("metadata", &self.metadata)
            .field("type", &self.secret_type)
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// The PEM texts a server credential is made of.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCredentialPem {
    pub cert_chain: String,
    pub private_key: String,
    /// The client CA when the Secret itself carries `ca.crt`.
    pub ca: Option<String>,
}

impl std::fmt::Debug for TlsCredentialPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCredentialPem")
            .field("has_ca", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

impl SecretObject {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace()
    }

    /// The decoded value under `key`, `Ok(None)` when absent. The error
    /// names the field path.
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, (String, String)> {
        if let Some(v) = self.string_data.get(key) {
            return Ok(Some(v.as_bytes().to_vec()));
        }
        let Some(v) = self.data.get(key) else {
            return Ok(None);
        };
        // Kubernetes accepts line-wrapped base64 in files.
        let compact: String = v.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map(Some)
            .map_err(|e| (format!("data.{key}"), format!("is not valid base64: {e}")))
    }

    fn text(&self, key: &str) -> Result<Option<String>, (String, String)> {
        match self.value(key)? {
            None => Ok(None),
            Some(b) => String::from_utf8(b).map(Some).map_err(|_| {
                (
                    format!("data.{key}"),
                    "is not UTF-8 text (expected PEM)".to_string(),
                )
            }),
        }
    }

    /// The server credential (`tls.crt` + `tls.key`, and `ca.crt` if
    /// present), checked: the chain parses, the key parses and matches.
    pub fn tls_credential(&self) -> Result<TlsCredentialPem, (String, String)> {
        let cert = self.text(TLS_CERT_KEY)?.ok_or_else(|| {
            (
                format!("data.{TLS_CERT_KEY}"),
                "is missing; a server credential needs tls.crt and tls.key".to_string(),
            )
        })?;
        let key = self.text(TLS_PRIVATE_KEY)?.ok_or_else(|| {
            (
                format!("data.{TLS_PRIVATE_KEY}"),
                "is missing; a server credential needs tls.crt and tls.key".to_string(),
            )
        })?;
        check_pair(&cert, &key)?;
        let ca = self.ca_bundle()?;
        Ok(TlsCredentialPem {
            cert_chain: cert,
            private_key: key,
            ca,
        })
    }

    /// The CA bundle (`ca.crt`, else `cacert`), checked to hold certificates.
    pub fn ca_bundle(&self) -> Result<Option<String>, (String, String)> {
        for key in [CA_CERT_KEY, CA_CERT_ALT_KEY] {
            if let Some(ca) = self.text(key)? {
                check_certs(&ca).map_err(|e| (format!("data.{key}"), e))?;
                return Ok(Some(ca));
            }
        }
        Ok(None)
    }

    /// Every problem that makes this Secret unusable, as (field, reason).
    /// Secrets that carry none of the TLS keys are accepted untouched (they
    /// may serve other purposes).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let has = |k: &str| self.data.contains_key(k) || self.string_data.contains_key(k);
        for key in self.data.keys() {
            if let Err(e) = self.value(key) {
                out.push(e);
            }
        }
        if !out.is_empty() {
            return out;
        }
        let is_tls = self.secret_type.as_deref() == Some("kubernetes.io/tls");
        if is_tls || has(TLS_CERT_KEY) || has(TLS_PRIVATE_KEY) {
            if let Err(e) = self.tls_credential() {
                out.push(e);
            }
        } else if let Err(e) = self.ca_bundle() {
            out.push(e);
        }
        out
    }
}

fn check_certs(pem: &str) -> Result<usize, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        c.map_err(|e| format!("is not valid PEM: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("holds no PEM CERTIFICATE block".to_string());
    }
    Ok(n)
}

fn check_pair(cert: &str, key: &str) -> Result<(), (String, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    check_certs(cert).map_err(|e| (format!("data.{TLS_CERT_KEY}"), e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
        (
            format!("data.{TLS_PRIVATE_KEY}"),
            format!("holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        (
            format!("data.{TLS_PRIVATE_KEY}"),
            format!("does not match tls.crt or is unsupported: {e}"),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn secret(data: &[(&str, String)]) -> SecretObject {
        SecretObject {
            api_version: "v1".into(),
            kind: "Secret".into(),
            secret_type: Some("kubernetes.io/tls".into()),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn tls_secret_decodes_and_checks() {
        let (c, k) = pair("a.example.com");
        let s = secret(&[("tls.crt", b64(&c)), ("tls.key", b64(&k))]);
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let cred = s.tls_credential().expect("valid");
        assert_eq!(cred.cert_chain, c);
        assert!(cred.ca.is_none());
        assert!(!format!("{s:?}").contains("PRIVATE"));
        assert!(!format!("{cred:?}").contains("PRIVATE"));
    }

    #[test]
    fn malformed_secrets_name_the_field() {
        let (c, k) = pair("a.example.com");
        let (_, other) = pair("b.example.com");
        let bad_b64 = secret(&[("tls.crt", "!!!".into()), ("tls.key", b64(&k))]);
        assert_eq!(bad_b64.problems()[0].0, "data.tls.crt");
        let mismatch = secret(&[("tls.crt", b64(&c)), ("tls.key", b64(&other))]);
        let p = mismatch.problems();
        assert_eq!(p[0].0, "data.tls.key");
        assert!(p[0].1.contains("does not match"), "{p:?}");
        let missing_key = secret(&[("tls.crt", b64(&c))]);
        assert_eq!(missing_key.problems()[0].0, "data.tls.key");
        let mut generic_ca = secret(&[("ca.crt", b64("not pem"))]);
        generic_ca.secret_type = None;
        assert_eq!(generic_ca.problems()[0].0, "data.ca.crt");
    }
}
