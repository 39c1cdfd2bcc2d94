//! Helpers shared by the per-resource conversions.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::{Message, Name};
use serde::Serialize;

use super::{ConfigError, Ctx, DEFAULT_CERT_SECRET};

/// Decodes an `Any` into `T`, checking the type URL first.
pub(crate) fn unpack<T: Message + Name + Default>(
    ctx: &Ctx,
    field: &str,
    any: &Any,
) -> Result<T, ConfigError> {
    let want = T::type_url();
    if any.type_url != want {
        return Err(ctx.err(
            field,
            format!("expected typed_config of type {want}, got {}", any.type_url),
        ));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| ctx.err(field, format!("cannot decode {want}: {e}")))
}

/// A socket address with an IP literal and a numeric port.
pub(crate) fn socket_addr(
    ctx: &Ctx,
    field: &str,
    addr: Option<&Address>,
) -> Result<SocketAddr, ConfigError> {
    let addr = addr.ok_or_else(|| ctx.err(field, "address is required"))?;
    let sa = match &addr.address {
        Some(address::Address::SocketAddress(sa)) => sa,
        Some(address::Address::Pipe(_)) => {
            return Err(ctx.err(
                field,
                "pipe addresses are not supported; use a socket address",
            ))
        }
        Some(address::Address::EnvoyInternalAddress(_)) => {
            return Err(ctx.err(field, "internal addresses are not supported"))
        }
        None => return Err(ctx.err(field, "address is empty")),
    };
    if sa.protocol != 0 {
        return Err(ctx.err(field, "only TCP socket addresses are supported here"));
    }
    if !sa.resolver_name.is_empty() {
        return Err(ctx.err(field, "custom resolvers are not supported"));
    }
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ctx.err(
            format!("{field}.socket_address.address"),
            format!(
                "{:?} is not an IP address (hostnames are not resolved here)",
                sa.address
            ),
        )
    })?;
    let port = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(*p).map_err(|_| {
            ctx.err(
                format!("{field}.socket_address.port_value"),
                format!("{p} is not a TCP port"),
            )
        })?,
        Some(socket_address::PortSpecifier::NamedPort(n)) => {
            return Err(ctx.err(
                format!("{field}.socket_address.named_port"),
                format!("named port {n:?} is not supported; use port_value"),
            ))
        }
        None => return Err(ctx.err(field, "port_value is required")),
    };
    Ok(SocketAddr::new(ip, port))
}

pub(crate) fn duration(
    ctx: &Ctx,
    field: &str,
    d: Option<&PbDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match d {
        None => Ok(default),
        Some(d) => {
            if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
                return Err(ctx.err(field, "duration must be non-negative"));
            }
            // Both components were range-checked just above.
            Ok(Duration::new(d.seconds as u64, d.nanos as u32))
        }
    }
}

/// How a peer's SPIFFE identity (URI SAN) must look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SanMatcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

impl SanMatcher {
    pub fn matches(&self, san: &str) -> bool {
        match self {
            SanMatcher::Exact(s) => san == s,
            SanMatcher::Prefix(s) => san.starts_with(s.as_str()),
            SanMatcher::Suffix(s) => san.ends_with(s.as_str()),
            SanMatcher::Contains(s) => san.contains(s.as_str()),
        }
    }
}

pub(crate) fn san_matcher(
    ctx: &Ctx,
    field: &str,
    m: &StringMatcher,
) -> Result<SanMatcher, ConfigError> {
    if m.ignore_case {
        return Err(ctx.err(
            field,
            "ignore_case is not supported for SPIFFE SAN matching",
        ));
    }
    match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => Ok(SanMatcher::Exact(s.clone())),
        Some(MatchPattern::Prefix(s)) => Ok(SanMatcher::Prefix(s.clone())),
        Some(MatchPattern::Suffix(s)) => Ok(SanMatcher::Suffix(s.clone())),
        Some(MatchPattern::Contains(s)) => Ok(SanMatcher::Contains(s.clone())),
        Some(MatchPattern::SafeRegex(_)) => Err(ctx.err(
            field,
            "safe_regex SAN matchers are not supported; use exact, prefix, suffix or contains",
        )),
        Some(_) => Err(ctx.err(field, "unsupported string matcher")),
        None => Err(ctx.err(field, "string matcher has no pattern")),
    }
}

/// Peer validation: a trust bundle (from SDS or inline) and the accepted identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Validation {
    /// SDS secret holding the trust bundle (`ROOTCA`), when not inline.
    pub secret: Option<String>,
    /// Inline trust anchors, DER.
    #[serde(skip)]
    pub inline_roots: Vec<Vec<u8>>,
    /// Accepted URI SANs; empty accepts any identity the bundle signed.
    pub san_matchers: Vec<SanMatcher>,
}

pub(crate) fn validation_context(
    ctx: &Ctx,
    field: &str,
    v: &CertificateValidationContext,
) -> Result<(Vec<Vec<u8>>, Vec<SanMatcher>), ConfigError> {
    let mut roots = Vec::new();
    if let Some(ds) = &v.trusted_ca {
        roots = super::secret::pem_certs(ctx, &format!("{field}.trusted_ca"), ds)?;
    }
    let mut sans = Vec::new();
    // Deprecated in Envoy in favour of the typed form, but Istio control
    // planes still send it; both are honoured.
    #[allow(deprecated)]
    let untyped = &v.match_subject_alt_names;
    for (i, m) in untyped.iter().enumerate() {
        sans.push(san_matcher(
            ctx,
            &format!("{field}.match_subject_alt_names[{i}]"),
            m,
        )?);
    }
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let f = format!("{field}.match_typed_subject_alt_names[{i}]");
        if m.san_type != SanType::Uri as i32 {
            return Err(ctx.err(&f, "only URI SANs (SPIFFE IDs) can be matched"));
        }
        let matcher = m
            .matcher
            .as_ref()
            .ok_or_else(|| ctx.err(&f, "matcher is required"))?;
        sans.push(san_matcher(ctx, &f, matcher)?);
    }
    if v.allow_expired_certificate {
        return Err(ctx.err(field, "allow_expired_certificate is not supported"));
    }
    if !v.verify_certificate_hash.is_empty() || !v.verify_certificate_spki.is_empty() {
        return Err(ctx.err(field, "certificate pinning (hash/spki) is not supported"));
    }
    Ok((roots, sans))
}

/// The parts of a `CommonTlsContext` the data plane honours.
pub(crate) struct CommonTls {
    pub cert_secret: Option<String>,
    pub validation: Option<Validation>,
    pub alpn: Vec<String>,
}

pub(crate) fn common_tls(
    ctx: &Ctx,
    field: &str,
    c: Option<&CommonTlsContext>,
) -> Result<CommonTls, ConfigError> {
    let Some(c) = c else {
        return Ok(CommonTls {
            cert_secret: None,
            validation: None,
            alpn: Vec::new(),
        });
    };
    if !c.tls_certificates.is_empty() {
        return Err(ctx.err(
            format!("{field}.tls_certificates"),
            "inline certificates are not accepted; reference the SDS secret \"default\"",
        ));
    }
    let cert_secret = match c.tls_certificate_sds_secret_configs.as_slice() {
        [] => None,
        [one] => {
            if one.name != DEFAULT_CERT_SECRET {
                return Err(ctx.err(
                    format!("{field}.tls_certificate_sds_secret_configs[0].name"),
                    format!(
                        "certificate secret {:?} is unknown; only \"{DEFAULT_CERT_SECRET}\" (the local workload certificate) exists",
                        one.name
                    ),
                ));
            }
            Some(one.name.clone())
        }
        _ => {
            return Err(ctx.err(
                format!("{field}.tls_certificate_sds_secret_configs"),
                "exactly one certificate secret is supported",
            ))
        }
    };
    let validation = match &c.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(v)) => {
            let (inline_roots, san_matchers) =
                validation_context(ctx, &format!("{field}.validation_context"), v)?;
            if inline_roots.is_empty() {
                return Err(ctx.err(
                    format!("{field}.validation_context.trusted_ca"),
                    "a validation context needs trusted_ca (or use an SDS validation secret)",
                ));
            }
            Some(Validation {
                secret: None,
                inline_roots,
                san_matchers,
            })
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => Some(Validation {
            secret: Some(sds_name(
                ctx,
                &format!("{field}.validation_context_sds_secret_config"),
                &s.name,
            )?),
            inline_roots: Vec::new(),
            san_matchers: Vec::new(),
        }),
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let f = format!("{field}.combined_validation_context");
            let sds = cv
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| ctx.err(&f, "validation_context_sds_secret_config is required"))?;
            let (inline_roots, san_matchers) = match &cv.default_validation_context {
                Some(d) => validation_context(ctx, &format!("{f}.default_validation_context"), d)?,
                None => (Vec::new(), Vec::new()),
            };
            Some(Validation {
                secret: Some(sds_name(
                    ctx,
                    &format!("{f}.validation_context_sds_secret_config"),
                    &sds.name,
                )?),
                inline_roots,
                san_matchers,
            })
        }
        Some(_) => {
            return Err(ctx.err(
                format!("{field}.validation_context_type"),
                "unsupported validation context type",
            ))
        }
    };
    Ok(CommonTls {
        cert_secret,
        validation,
        alpn: c.alpn_protocols.clone(),
    })
}

fn sds_name(ctx: &Ctx, field: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty() {
        return Err(ctx.err(field, "SDS secret name is empty"));
    }
    Ok(name.to_string())
}
