//! SDS `Secret` → trust bundle, or a server credential (a Gateway's
//! `credentialName`: certificate chain and key).

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use serde::Serialize;

use super::common::{validation_context, SanMatcher};
use super::{ConfigError, Ctx, DEFAULT_CERT_SECRET};

/// A validation-context secret: the trust bundle peers are verified against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretConfig {
    pub name: String,
    /// Trust anchors, DER.
    #[serde(skip)]
    pub roots: Vec<Vec<u8>>,
    /// SAN matchers carried by the secret itself (added to the context's own).
    pub san_matchers: Vec<SanMatcher>,
    pub root_count: usize,
    /// For `tls_certificate` secrets: the credential a TLS server presents.
    pub certificate: Option<crate::tls::ServerCredential>,
}

pub fn secret_from_proto(s: &Secret) -> Result<SecretConfig, ConfigError> {
    let ctx = Ctx::new("Secret", &s.name);
    if s.name.is_empty() {
        return Err(ctx.err("name", "secret name is empty"));
    }
    if s.name == DEFAULT_CERT_SECRET {
        return Err(ctx.err(
            "name",
            "the \"default\" certificate is produced by the proxy itself; the control plane must not send it",
        ));
    }
    match &s.r#type {
        Some(secret::Type::ValidationContext(v)) => {
            let (roots, san_matchers) = validation_context(&ctx, "validation_context", v)?;
            if roots.is_empty() {
                return Err(ctx.err("validation_context.trusted_ca", "trust bundle is empty"));
            }
            Ok(SecretConfig {
                name: s.name.clone(),
                root_count: roots.len(),
                roots,
                san_matchers,
                certificate: None,
            })
        }
        // User credentials (Istio `credentialName`) for TLS servers; the
        // workload's own key never travels (see the `default` check above).
        Some(secret::Type::TlsCertificate(t)) => {
            let chain = t
                .certificate_chain
                .as_ref()
                .ok_or_else(|| ctx.err("tls_certificate.certificate_chain", "is required"))?;
            let key = t
                .private_key
                .as_ref()
                .ok_or_else(|| ctx.err("tls_certificate.private_key", "is required"))?;
            let chain =
                super::server_tls::inline_bytes(&ctx, "tls_certificate.certificate_chain", chain)?;
            let key = super::server_tls::inline_bytes(&ctx, "tls_certificate.private_key", key)?;
            let cred = crate::tls::ServerCredential::from_pem(chain, key, "tls_certificate")
                .map_err(|e| ctx.err("tls_certificate", e.to_string()))?;
            Ok(SecretConfig {
                name: s.name.clone(),
                roots: Vec::new(),
                san_matchers: Vec::new(),
                root_count: 0,
                certificate: Some(cred),
            })
        }
        Some(_) => Err(ctx.err(
            "type",
            "only validation_context and tls_certificate secrets are supported",
        )),
        None => Err(ctx.err("type", "secret has no content")),
    }
}

/// Reads every CERTIFICATE block of an inline PEM data source.
pub(crate) fn pem_certs(
    ctx: &Ctx,
    field: &str,
    ds: &DataSource,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    let bytes: &[u8] = match &ds.specifier {
        Some(Specifier::InlineBytes(b)) => b,
        Some(Specifier::InlineString(s)) => s.as_bytes(),
        Some(Specifier::Filename(f)) => {
            return Err(ctx.err(
                field,
                format!("file data source {f:?} is not read by the data plane; inline the PEM"),
            ))
        }
        Some(_) => return Err(ctx.err(field, "only inline_bytes or inline_string are supported")),
        None => return Err(ctx.err(field, "data source is empty")),
    };
    let mut out = Vec::new();
    for (i, item) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let pem = item.map_err(|e| ctx.err(field, format!("PEM block {i} is malformed: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(ctx.err(
                field,
                format!("PEM block {i} is {:?}, expected CERTIFICATE", pem.label),
            ));
        }
        x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| ctx.err(field, format!("certificate {i} does not parse: {e}")))?;
        out.push(pem.contents);
    }
    if out.is_empty() {
        return Err(ctx.err(field, "no PEM CERTIFICATE block found"));
    }
    Ok(out)
}
