//! SDS `Secret` → trust bundle.

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
            })
        }
        Some(secret::Type::TlsCertificate(_)) => Err(ctx.err(
            "tls_certificate",
            "private keys never leave the workload; only validation_context secrets are accepted",
        )),
        Some(_) => Err(ctx.err("type", "only validation_context secrets are supported")),
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
