//! `envoy.filters.network.http_connection_manager` → how a chain speaks HTTP.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager,
};
use serde::Serialize;

use super::common::{duration, unpack};
use super::fault::{fault_from_proto, FaultConfig};
use super::route::{route_table, RouteTable, FAULT_FILTER};
use super::{ConfigError, Ctx};

pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const ROUTER: &str = "envoy.filters.http.router";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// RDS over ADS, by route configuration name.
    Rds(String),
    Inline(#[serde(serialize_with = "inline_table")] Arc<RouteTable>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpConfig {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    /// The fault filter is in the chain; `Some` default config applies to
    /// routes without per-route config.
    pub fault: Option<FaultConfig>,
    /// Request headers larger than this are refused with 431.
    pub max_request_headers_bytes: usize,
    /// No activity on a stream for this long: 408 before the response
    /// starts, a reset after (Envoy's default 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// The whole request must be received within this (408); off by default.
    pub request_timeout: Option<Duration>,
    /// Request headers must arrive within this (the connection is closed).
    pub request_headers_timeout: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout`: a downstream connection
    /// with no active request for this long is closed (Envoy's default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `upgrade_configs` (e.g. `websocket`); lower case.
    pub upgrades: Vec<String>,
    /// `envoy.filters.http.rbac` filters, in chain order (crate::rbac).
    pub rbac: Vec<crate::rbac::RbacFilter>,
    /// `envoy.filters.http.jwt_authn` (crate::authn::jwt); runs before RBAC.
    #[serde(serialize_with = "crate::authn::ser_opt_arc")]
    pub jwt: Option<Arc<crate::authn::JwtAuthn>>,
    /// `envoy.filters.http.local_ratelimit` is in the chain; its own bucket
    /// (if any) applies to routes without per-route config.
    #[serde(serialize_with = "crate::authn::ser_opt_arc")]
    pub ratelimit: Option<Arc<crate::authn::RateLimiter>>,
    /// `tracing` (crate::trace): sampling and collector; `None` = no tracing.
    pub tracing: Option<crate::trace::TracingConfig>,
    /// `access_log` (crate::accesslog).
    pub access_log: Vec<crate::accesslog::AccessLogConfig>,
}

fn inline_table<S: serde::Serializer>(t: &Arc<RouteTable>, s: S) -> Result<S::Ok, S::Error> {
    t.as_ref().serialize(s)
}

impl HttpConfig {
    pub fn rds_name(&self) -> Option<&str> {
        match &self.routes {
            RouteSource::Rds(n) => Some(n),
            RouteSource::Inline(_) => None,
        }
    }
}

pub(crate) fn http_from_proto(
    ctx: &Ctx,
    f: &str,
    h: &HttpConnectionManager,
) -> Result<HttpConfig, ConfigError> {
    let codec = match CodecType::try_from(h.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        Ok(CodecType::Http3) => {
            return Err(ctx.err(format!("{f}.codec_type"), "HTTP/3 is not supported"))
        }
        Err(_) => return Err(ctx.err(format!("{f}.codec_type"), "unknown codec")),
    };
    let routes = match &h.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            match rds
                .config_source
                .as_ref()
                .and_then(|c| c.config_source_specifier.as_ref())
            {
                Some(ConfigSourceSpecifier::Ads(_)) | None => {}
                Some(_) => {
                    return Err(ctx.err(
                        format!("{f}.rds.config_source"),
                        "only ADS is supported as the RDS config source",
                    ))
                }
            }
            if rds.route_config_name.is_empty() {
                return Err(ctx.err(format!("{f}.rds.route_config_name"), "empty"));
            }
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Arc::new(route_table(
            ctx,
            &format!("{f}.route_config."),
            rc,
        )?)),
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(ctx.err(
                format!("{f}.scoped_routes"),
                "scoped routes are not supported",
            ))
        }
        None => return Err(ctx.err(f, "rds or route_config is required")),
    };
    if h.http_filters.is_empty() {
        return Err(ctx.err(
            format!("{f}.http_filters"),
            format!("at least the {ROUTER} filter is required"),
        ));
    }
    let mut fault = None;
    let mut rbac = Vec::new();
    let (mut jwt, mut ratelimit) = (None, None);
    let last = h.http_filters.len() - 1;
    for (i, hf) in h.http_filters.iter().enumerate() {
        let ff = format!("{f}.http_filters[{i}]");
        let any = match &hf.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
            Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ctx.err(&ff, "filter config discovery (ECDS) is not supported"))
            }
            None => None,
        };
        let type_url = any.map(|a| a.type_url.as_str()).unwrap_or("");
        let is_router = hf.name == ROUTER || type_url == <Router as prost::Name>::type_url();
        let is_fault =
            hf.name == FAULT_FILTER || type_url == <HttpFault as prost::Name>::type_url();
        if hf.disabled {
            continue;
        }
        if is_router {
            if i != last {
                return Err(ctx.err(&ff, format!("{ROUTER} must be the last HTTP filter")));
            }
        } else if is_fault {
            let cfg = match any {
                Some(a) => {
                    let pb: HttpFault = unpack(ctx, &format!("{ff}.typed_config"), a)?;
                    fault_from_proto(ctx, &format!("{ff}.typed_config"), &pb)?
                }
                None => FaultConfig::default(),
            };
            fault = Some(cfg);
        } else if let Some(a) = crate::authn::http_filter(ctx, &ff, &hf.name, any)? {
            match a {
                crate::authn::AuthnFilter::Jwt(j) => jwt = Some(j),
                crate::authn::AuthnFilter::RateLimit(r) => ratelimit = Some(r),
            }
        } else if let Some(r) = crate::rbac::http_filter(ctx, &ff, &hf.name, any)? {
            rbac.push(r);
        } else if hf.is_optional {
            tracing::debug!(filter = %hf.name, "optional HTTP filter not supported; skipped");
        } else {
            return Err(ctx.err(
                &ff,
                format!(
                    "HTTP filter {:?} ({type_url}) is not supported (supported: {FAULT_FILTER}, {ROUTER}); mark it is_optional to skip it",
                    hf.name
                ),
            ));
        }
        if i == last && !is_router {
            return Err(ctx.err(&ff, format!("the last HTTP filter must be {ROUTER}")));
        }
    }
    let max_request_headers_bytes = h
        .max_request_headers_kb
        .as_ref()
        .map_or(60 * 1024, |v| v.value as usize * 1024)
        .max(1024);
    let opt = |field: &str,
               d: Option<&envoy_types::pb::google::protobuf::Duration>,
               default: Option<Duration>|
     -> Result<Option<Duration>, ConfigError> {
        match d {
            None => Ok(default),
            Some(d) => {
                let d = duration(ctx, &format!("{f}.{field}"), Some(d), Duration::ZERO)?;
                Ok((!d.is_zero()).then_some(d))
            }
        }
    };
    let stream_idle_timeout = opt(
        "stream_idle_timeout",
        h.stream_idle_timeout.as_ref(),
        Some(Duration::from_secs(300)),
    )?;
    let request_timeout = opt("request_timeout", h.request_timeout.as_ref(), None)?;
    let request_headers_timeout = opt(
        "request_headers_timeout",
        h.request_headers_timeout.as_ref(),
        None,
    )?;
    let idle_timeout = opt(
        "common_http_protocol_options.idle_timeout",
        h.common_http_protocol_options
            .as_ref()
            .and_then(|c| c.idle_timeout.as_ref()),
        Some(Duration::from_secs(3600)),
    )?;
    let mut upgrades = Vec::new();
    for (i, u) in h.upgrade_configs.iter().enumerate() {
        if !u.filters.is_empty() {
            return Err(ctx.err(
                format!("{f}.upgrade_configs[{i}].filters"),
                "per-upgrade filter chains are not supported",
            ));
        }
        if u.enabled.as_ref().is_none_or(|b| b.value) {
            upgrades.push(u.upgrade_type.to_ascii_lowercase());
        }
    }
    Ok(HttpConfig {
        stat_prefix: h.stat_prefix.clone(),
        codec,
        routes,
        fault,
        max_request_headers_bytes,
        stream_idle_timeout,
        request_timeout,
        request_headers_timeout,
        idle_timeout,
        upgrades,
        rbac,
        jwt,
        ratelimit,
        tracing: h
            .tracing
            .as_ref()
            .map(|t| crate::trace::config::tracing_from_proto(ctx, &format!("{f}.tracing"), t))
            .transpose()?,
        access_log: crate::accesslog::config::access_logs_from_proto(
            ctx,
            &format!("{f}.access_log"),
            &h.access_log,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
    use envoy_types::pb::google::protobuf::UInt32Value;
    use envoy_types::util::pack_any;

    fn filter(
        name: &str,
        any: envoy_types::pb::google::protobuf::Any,
        optional: bool,
    ) -> HttpFilter {
        HttpFilter {
            name: name.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any)),
            is_optional: optional,
            ..Default::default()
        }
    }

    fn hcm(filters: Vec<HttpFilter>) -> HttpConnectionManager {
        HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(
                envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds {
                    config_source: None,
                    route_config_name: "80".into(),
                },
            )),
            http_filters: filters,
            ..Default::default()
        }
    }

    fn router() -> HttpFilter {
        filter(ROUTER, pack_any(Router::default()), false)
    }

    #[test]
    fn filters_are_checked() {
        let ctx = Ctx::new("Listener", "l");
        let ok = http_from_proto(
            &ctx,
            "hcm",
            &hcm(vec![
                filter(FAULT_FILTER, pack_any(HttpFault::default()), false),
                router(),
            ]),
        )
        .expect("fault + router");
        assert_eq!(ok.rds_name(), Some("80"));
        assert_eq!(ok.fault, Some(FaultConfig::default()));
        assert_eq!(ok.codec, Codec::Auto);

        let unknown = filter(
            "envoy.filters.http.lua",
            pack_any(UInt32Value { value: 1 }),
            false,
        );
        let e = http_from_proto(&ctx, "hcm", &hcm(vec![unknown.clone(), router()]))
            .expect_err("unknown filter");
        assert_eq!(e.field, "hcm.http_filters[0]");
        assert!(e.reason.contains("is_optional"), "{e}");

        let optional = HttpFilter {
            is_optional: true,
            ..unknown
        };
        let ok =
            http_from_proto(&ctx, "hcm", &hcm(vec![optional, router()])).expect("optional skipped");
        assert_eq!(ok.fault, None);

        let e = http_from_proto(
            &ctx,
            "hcm",
            &hcm(vec![
                router(),
                filter(FAULT_FILTER, pack_any(HttpFault::default()), false),
            ]),
        )
        .expect_err("router not last");
        assert!(e.reason.contains("last"), "{e}");
        let e = http_from_proto(&ctx, "hcm", &hcm(vec![])).expect_err("no filters");
        assert_eq!(e.field, "hcm.http_filters");
    }
}
