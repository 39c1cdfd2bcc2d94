//! The user-TLS parts of an `UpstreamTlsContext` (DestinationRule `tls.mode:
//! SIMPLE` / `MUTUAL` toward an external host): a client certificate from
//! files or inline PEM, a CA file (`caCertificates`), and DNS SAN matchers.
//! They are taken out of the context before the shared parser (which only
//! knows the mesh's SDS secrets and SPIFFE SANs) sees it.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType, CommonTlsContext,
    TlsCertificate,
};
use serde::Serialize;

use super::common::SanMatcher;
use super::server_tls::{key_pair, KeyPair};
use super::{ConfigError, Ctx};
use crate::tls::ServerCredential;

/// The certificate a TLS-originating proxy presents (MUTUAL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertSource {
    /// PEM files on the gateway (Istio `clientCertificate`/`privateKey`),
    /// read when the cluster is built.
    Files {
        chain: PathBuf,
        key: PathBuf,
    },
    Inline(ServerCredential),
}

/// TLS origination toward a server outside the mesh: the server is
/// verified as a web client would (chain to the configured CA, and the SNI
/// or the listed DNS names in its certificate), not as a SPIFFE workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origination {
    /// Istio `caCertificates`: a PEM bundle file on the gateway.
    pub ca_file: Option<PathBuf>,
    /// Istio `subjectAltNames` (DNS names); empty checks the SNI instead.
    pub dns_sans: Vec<SanMatcher>,
    pub client_cert: Option<ClientCertSource>,
}

/// Takes the origination settings out of `c`. Returns `None` when `c` has
/// none (a mesh context); the caller then decides from the validation
/// secret whether the peer is a mesh workload.
pub(crate) fn take_origination(
    ctx: &Ctx,
    cf: &str,
    c: &mut CommonTlsContext,
) -> Result<Option<Origination>, ConfigError> {
    let client_cert = match std::mem::take(&mut c.tls_certificates).as_slice() {
        [] => None,
        [one] => Some(client_certificate(
            ctx,
            &format!("{cf}.tls_certificates[0]"),
            one,
        )?),
        _ => {
            return Err(ctx.err(
                format!("{cf}.tls_certificates"),
                "exactly one client certificate is supported",
            ))
        }
    };
    let mut ca_file = None;
    let mut dns_sans = Vec::new();
    if let Some(ValidationContextType::ValidationContext(v)) = &mut c.validation_context_type {
        let vf = format!("{cf}.validation_context");
        if let Some(DataSource {
            specifier: Some(Specifier::Filename(path)),
            ..
        }) = &v.trusted_ca
        {
            if path.is_empty() {
                return Err(ctx.err(format!("{vf}.trusted_ca.filename"), "file name is empty"));
            }
            ca_file = Some(PathBuf::from(path));
            v.trusted_ca = None;
        }
        let typed = std::mem::take(&mut v.match_typed_subject_alt_names);
        for (i, m) in typed.into_iter().enumerate() {
            let f = format!("{vf}.match_typed_subject_alt_names[{i}]");
            let matcher = m
                .matcher
                .as_ref()
                .ok_or_else(|| ctx.err(&f, "matcher is required"))?;
            if m.san_type == SanType::Dns as i32 {
                dns_sans.push(super::common::san_matcher(ctx, &f, matcher)?);
            } else {
                // URI SANs (SPIFFE) stay with the mesh parser.
                v.match_typed_subject_alt_names.push(m);
            }
        }
        if ca_file.is_some() && v.trusted_ca.is_none() && v.match_typed_subject_alt_names.is_empty()
        {
            #[allow(deprecated)]
            let untyped_empty = v.match_subject_alt_names.is_empty();
            if untyped_empty {
                c.validation_context_type = None;
            }
        }
    }
    if client_cert.is_none() && ca_file.is_none() && dns_sans.is_empty() {
        return Ok(None);
    }
    Ok(Some(Origination {
        ca_file,
        dns_sans,
        client_cert,
    }))
}

fn client_certificate(
    ctx: &Ctx,
    f: &str,
    t: &TlsCertificate,
) -> Result<ClientCertSource, ConfigError> {
    Ok(match key_pair(ctx, f, t)? {
        KeyPair::Files { chain, key } => ClientCertSource::Files { chain, key },
        KeyPair::Inline(cred) => ClientCertSource::Inline(cred),
    })
}
