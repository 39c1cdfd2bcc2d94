//! `DownstreamTlsContext` → how a filter chain terminates TLS: which
//! certificate it presents (the workload's own, an SDS credential such as a
//! Gateway's `credentialName`, or PEM files on the gateway) and how client
//! certificates are checked (mesh SPIFFE identities, or a user CA).

use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CommonTlsContext, DownstreamTlsContext,
    TlsCertificate,
};
use serde::Serialize;

use super::common::{common_tls, validation_context, Validation};
use super::{ConfigError, Ctx, DEFAULT_CERT_SECRET};
use crate::tls::ServerCredential;

/// Where a TLS server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerCertSource {
    /// SDS `default`: the proxy's own workload certificate (mesh mTLS).
    Workload,
    /// Another SDS secret: a `tls_certificate` the control plane sends
    /// (Istio `credentialName`).
    Sds(String),
    /// `tls_certificates` naming PEM files on the gateway's filesystem
    /// (Istio `serverCertificate`/`privateKey`), read when the chain is built.
    Files { chain: PathBuf, key: PathBuf },
    /// `tls_certificates` with inline PEM.
    Inline(ServerCredential),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownstreamTls {
    pub require_client_certificate: bool,
    pub certificate: ServerCertSource,
    /// Client certificate validation (trust anchors from SDS or inline).
    pub validation: Option<Validation>,
    /// A trust bundle file on the gateway (Istio `caCertificates`).
    pub ca_file: Option<PathBuf>,
    pub alpn: Vec<String>,
}

impl DownstreamTls {
    /// Mesh servers (workload certificate) verify SPIFFE identities; user
    /// servers verify ordinary X.509 client certificates against their CA.
    pub fn verifies_mesh_peers(&self) -> bool {
        self.certificate == ServerCertSource::Workload
    }

    /// SDS names this context needs (certificate and validation secrets).
    pub fn sds_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let ServerCertSource::Sds(n) = &self.certificate {
            out.push(n.clone());
        }
        if let Some(s) = self.validation.as_ref().and_then(|v| v.secret.clone()) {
            out.push(s);
        }
        out
    }
}

pub(crate) fn downstream_tls_context(
    ctx: &Ctx,
    f: &str,
    d: &DownstreamTlsContext,
) -> Result<DownstreamTls, ConfigError> {
    let cf = format!("{f}.common_tls_context");
    let mut common_in = d.common_tls_context.clone().unwrap_or_default();
    let certificate = certificate_source(ctx, &cf, &mut common_in)?;
    let ca_file = take_ca_file(&mut common_in);
    // With a CA file the validation context is read here; otherwise (SDS,
    // inline PEM) by the shared parser with the ALPN settings.
    let file_validation = match (&ca_file, &common_in.validation_context_type) {
        (Some(_), Some(ValidationContextType::ValidationContext(v))) => {
            let (_, san_matchers) =
                validation_context(ctx, &format!("{cf}.validation_context"), v)?;
            common_in.validation_context_type = None;
            Some(Validation {
                secret: None,
                inline_roots: Vec::new(),
                san_matchers,
            })
        }
        _ => None,
    };
    let mut common = common_tls(ctx, &cf, Some(&common_in))?;
    if file_validation.is_some() {
        common.validation = file_validation;
    }
    let require_client_certificate = d
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    if require_client_certificate && common.validation.is_none() {
        return Err(ctx.err(
            format!("{f}.require_client_certificate"),
            "requiring client certificates needs a validation context (SDS \"ROOTCA\", a NAME-cacert secret, or trusted_ca)",
        ));
    }
    if certificate != ServerCertSource::Workload
        && common
            .validation
            .as_ref()
            .is_some_and(|v| !v.san_matchers.is_empty())
    {
        return Err(ctx.err(
            format!("{cf}.validation_context"),
            "subject alt name matching of client certificates is only supported for mesh (SPIFFE) peers",
        ));
    }
    if d.require_sni.as_ref().is_some_and(|b| b.value) {
        return Err(ctx.err(format!("{f}.require_sni"), "not supported"));
    }
    Ok(DownstreamTls {
        require_client_certificate,
        certificate,
        validation: common.validation,
        ca_file,
        alpn: common.alpn,
    })
}

/// Takes the certificate settings out of `c` (so the shared parser, which
/// only knows the workload certificate, does not see them).
fn certificate_source(
    ctx: &Ctx,
    cf: &str,
    c: &mut CommonTlsContext,
) -> Result<ServerCertSource, ConfigError> {
    let sds = std::mem::take(&mut c.tls_certificate_sds_secret_configs);
    let inline = std::mem::take(&mut c.tls_certificates);
    match (sds.as_slice(), inline.as_slice()) {
        ([], []) => Err(ctx.err(
            format!("{cf}.tls_certificate_sds_secret_configs"),
            "a server TLS context needs a certificate: SDS \"default\", an SDS credential, or tls_certificates",
        )),
        ([one], []) if one.name == DEFAULT_CERT_SECRET => Ok(ServerCertSource::Workload),
        ([one], []) if one.name.is_empty() => Err(ctx.err(
            format!("{cf}.tls_certificate_sds_secret_configs[0].name"),
            "SDS secret name is empty",
        )),
        ([one], []) => Ok(ServerCertSource::Sds(one.name.clone())),
        ([], [one]) => tls_certificate(ctx, &format!("{cf}.tls_certificates[0]"), one),
        _ => Err(ctx.err(
            cf,
            "exactly one certificate (one SDS secret or one tls_certificates entry) is supported",
        )),
    }
}

fn tls_certificate(
    ctx: &Ctx,
    f: &str,
    t: &TlsCertificate,
) -> Result<ServerCertSource, ConfigError> {
    Ok(match key_pair(ctx, f, t)? {
        KeyPair::Files { chain, key } => ServerCertSource::Files { chain, key },
        KeyPair::Inline(cred) => ServerCertSource::Inline(cred),
    })
}

/// A certificate chain and key named by a `TlsCertificate`: files the
/// proxy reads itself, or inline PEM checked here.
pub(crate) enum KeyPair {
    Files { chain: PathBuf, key: PathBuf },
    Inline(ServerCredential),
}

pub(crate) fn key_pair(ctx: &Ctx, f: &str, t: &TlsCertificate) -> Result<KeyPair, ConfigError> {
    let chain = t
        .certificate_chain
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{f}.certificate_chain"), "is required"))?;
    let key = t
        .private_key
        .as_ref()
        .ok_or_else(|| ctx.err(format!("{f}.private_key"), "is required"))?;
    match (&chain.specifier, &key.specifier) {
        (Some(Specifier::Filename(c)), Some(Specifier::Filename(k))) => {
            if c.is_empty() || k.is_empty() {
                return Err(ctx.err(
                    f,
                    "certificate_chain and private_key file names must not be empty",
                ));
            }
            Ok(KeyPair::Files {
                chain: PathBuf::from(c),
                key: PathBuf::from(k),
            })
        }
        _ => {
            let c = inline_bytes(ctx, &format!("{f}.certificate_chain"), chain)?;
            let k = inline_bytes(ctx, &format!("{f}.private_key"), key)?;
            let cred =
                ServerCredential::from_pem(c, k, f).map_err(|e| ctx.err(f, e.to_string()))?;
            Ok(KeyPair::Inline(cred))
        }
    }
}

/// Bytes of an inline data source (SDS and inline `tls_certificates`).
pub(crate) fn inline_bytes<'a>(
    ctx: &Ctx,
    f: &str,
    ds: &'a DataSource,
) -> Result<&'a [u8], ConfigError> {
    match &ds.specifier {
        Some(Specifier::InlineBytes(b)) => Ok(b),
        Some(Specifier::InlineString(s)) => Ok(s.as_bytes()),
        Some(Specifier::Filename(_)) => Err(ctx.err(
            f,
            "mixing a file with an inline value is not supported; give both as files or both inline",
        )),
        Some(_) => Err(ctx.err(f, "only inline_bytes, inline_string or filename are supported")),
        None => Err(ctx.err(f, "data source is empty")),
    }
}

/// A `trusted_ca` naming a file is taken out and returned (the data plane
/// reads it when the chain is built).
fn take_ca_file(c: &mut CommonTlsContext) -> Option<PathBuf> {
    let Some(ValidationContextType::ValidationContext(v)) = &mut c.validation_context_type else {
        return None;
    };
    if let Some(DataSource {
        specifier: Some(Specifier::Filename(path)),
        ..
    }) = &v.trusted_ca
    {
        let path = PathBuf::from(path);
        v.trusted_ca = None;
        return Some(path);
    }
    None
}
