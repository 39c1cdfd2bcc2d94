//! Where RBAC meets the proxy: recognising the filters in a chain's config,
//! building [`Attributes`] from a connection or request, and turning a
//! denial into Envoy's 403 `RBAC: access denied` (HTTP) or a closed
//! connection (TCP), counted and logged.

use std::net::SocketAddr;

use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::google::protobuf::Any;
use http::{Request, Response, StatusCode};

use super::{
    evaluate, http_rbac_from_proto, network_rbac_from_proto, Attributes, RbacFilter,
    RequestAttributes, Verdict, HTTP_RBAC, NETWORK_RBAC,
};
use crate::config::{ConfigError, Ctx};
use crate::http::respond::{local, RequestLog};
use crate::http::server::Downstream;
use crate::http::Body;
use crate::metrics::Metrics;

/// Envoy's local reply body for an RBAC denial.
pub const DENIED_BODY: &str = "RBAC: access denied";
/// Envoy's response flag for an RBAC denial.
pub const DENIED_FLAG: &str = "RBAC";

/// Parses an HTTP filter if it is `envoy.filters.http.rbac` (by name or type
/// URL); `Ok(None)` for any other filter.
pub(crate) fn http_filter(
    ctx: &Ctx,
    field: &str,
    name: &str,
    any: Option<&Any>,
) -> Result<Option<RbacFilter>, ConfigError> {
    let type_url = any.map(|a| a.type_url.as_str()).unwrap_or("");
    if name != HTTP_RBAC && type_url != <HttpRbac as prost::Name>::type_url() {
        return Ok(None);
    }
    match any {
        // Without config the filter has no rules: it allows everything.
        None => Ok(Some(RbacFilter {
            name: name.to_string(),
            stat_prefix: String::new(),
            rules: None,
        })),
        Some(a) => http_rbac_from_proto(ctx, &format!("{field}.typed_config"), name, a).map(Some),
    }
}

/// Parses a network filter if it is `envoy.filters.network.rbac`.
pub(crate) fn network_filter(
    ctx: &Ctx,
    field: &str,
    name: &str,
    any: &Any,
) -> Result<Option<RbacFilter>, ConfigError> {
    if name != NETWORK_RBAC && any.type_url != <NetworkRbac as prost::Name>::type_url() {
        return Ok(None);
    }
    network_rbac_from_proto(ctx, &format!("{field}.typed_config"), name, any).map(Some)
}

fn count(metrics: &Metrics, listener: &str, protocol: &str, v: &Verdict) {
    let (result, prefix) = match v {
        Verdict::Allowed { logged } if !logged.is_empty() => ("logged", ""),
        Verdict::Allowed { .. } => ("allowed", ""),
        Verdict::Denied { stat_prefix, .. } => ("denied", stat_prefix.as_str()),
    };
    metrics
        .rbac_decisions
        .with_label_values(&[listener, protocol, result, prefix])
        .inc();
}

/// HTTP RBAC for one request: `Some(403)` when denied. Attributes come from
/// the downstream connection, the request head and the JWT the authn filter
/// attached (`crate::authn::VerifiedJwt`).
pub fn check_request<B>(
    filters: &[RbacFilter],
    down: &Downstream,
    req: &Request<B>,
    authority: &str,
    path: &str,
    metrics: &Metrics,
    log: &mut RequestLog,
) -> Option<Response<Body>> {
    if filters.is_empty() {
        return None;
    }
    let jwt = req.extensions().get::<crate::authn::VerifiedJwt>();
    let attrs = Attributes {
        peer: down.peer,
        remote_ip: down.peer.ip(),
        destination: down.local,
        principal: down.identity.as_deref(),
        sni: down.sni.as_deref(),
        request: Some(RequestAttributes {
            method: req.method().as_str(),
            authority,
            path,
            scheme: if down.tls { "https" } else { "http" },
            headers: req.headers(),
            jwt: jwt.map(|j| (j.principal.as_str(), &j.claims)),
        }),
    };
    let verdict = evaluate(filters, &attrs);
    count(metrics, &down.listener, "http", &verdict);
    match verdict {
        Verdict::Allowed { logged } => {
            if !logged.is_empty() {
                tracing::info!(
                    target: "isthmus_gateway::rbac",
                    listener = %down.listener,
                    policies = ?logged,
                    "RBAC audit: request matched"
                );
            }
            None
        }
        Verdict::Denied {
            stat_prefix,
            policy,
        } => {
            log.flags.add(DENIED_FLAG);
            // Envoy's response code details: which DENY policy matched, or
            // that no ALLOW policy did.
            let details = match &policy {
                Some(p) => format!("rbac_access_denied_matched_policy[{p}]"),
                None => "rbac_access_denied_matched_policy[none]".to_string(),
            };
            tracing::info!(
                target: "isthmus_gateway::rbac",
                listener = %down.listener,
                stat_prefix = %stat_prefix,
                downstream = %down.peer,
                principal = ?down.identity,
                method = %req.method(),
                path,
                details,
                "RBAC denied request"
            );
            Some(local(StatusCode::FORBIDDEN, DENIED_BODY, &log.flags))
        }
    }
}

/// Network RBAC for one connection, after the TLS handshake: `Err` with the
/// response code details when the connection must be closed.
pub fn check_connection(
    filters: &[RbacFilter],
    listener: &str,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    principal: Option<&str>,
    sni: Option<&str>,
    metrics: &Metrics,
) -> Result<(), String> {
    if filters.is_empty() {
        return Ok(());
    }
    let attrs = Attributes {
        peer,
        remote_ip: peer.ip(),
        destination: local,
        principal,
        sni,
        request: None,
    };
    let verdict = evaluate(filters, &attrs);
    count(metrics, listener, "tcp", &verdict);
    match verdict {
        Verdict::Allowed { logged } => {
            if !logged.is_empty() {
                tracing::info!(target: "isthmus_gateway::rbac", listener, policies = ?logged, "RBAC audit: connection matched");
            }
            Ok(())
        }
        Verdict::Denied { policy, .. } => Err(match policy {
            Some(p) => format!("rbac_access_denied_matched_policy[{p}]"),
            None => "rbac_access_denied_matched_policy[none]".to_string(),
        }),
    }
}

/// The network filters before a chain's terminal filter: each must be RBAC.
pub(crate) fn network_filters(
    ctx: &Ctx,
    field: &str,
    filters: &[envoy_types::pb::envoy::config::listener::v3::Filter],
) -> Result<Vec<RbacFilter>, ConfigError> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    let mut out = Vec::new();
    for (i, nf) in filters.iter().enumerate() {
        let ff = format!("{field}.filters[{i}]");
        let Some(ConfigType::TypedConfig(any)) = &nf.config_type else {
            return Err(ctx.err(&ff, "typed_config is required"));
        };
        match network_filter(ctx, &ff, &nf.name, any)? {
            Some(r) => out.push(r),
            None => {
                return Err(ctx.err(
                    &ff,
                    format!(
                        "network filter {:?} ({}) is not supported before the terminal filter; only {NETWORK_RBAC}",
                        nf.name, any.type_url
                    ),
                ))
            }
        }
    }
    Ok(out)
}
