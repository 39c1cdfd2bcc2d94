//! The connection manager's `tracing` field → what this data plane traces
//! and where it sends spans.
//!
//! Supported provider: `envoy.tracers.opentelemetry` with a `grpc_service`
//! naming the collector by `google_grpc.target_uri` (plaintext OTLP/gRPC,
//! dialled directly). Without a provider the proxy still propagates and
//! samples, like Envoy with a tracer that has nowhere to report.

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::trace::v3::{tracing::http::ConfigType, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use prost::{Message, Name};
use serde::Serialize;

use crate::config::{ConfigError, Ctx};

pub const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";

/// Where spans go: an OTLP/gRPC collector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Collector {
    /// `http://host:port` (a bare `host:port` gets `http://`).
    Grpc(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracingConfig {
    /// `random_sampling` (Envoy's default 100%), capped by `overall_sampling`.
    pub sampling_per_million: u32,
    pub collector: Option<Collector>,
    /// OTLP resource `service.name`; empty uses the proxy's canonical service.
    pub service_name: String,
    /// `max_path_tag_length` (default 256).
    pub max_path_tag_length: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            sampling_per_million: 1_000_000,
            collector: None,
            service_name: String::new(),
            max_path_tag_length: 256,
        }
    }
}

fn per_million(
    ctx: &Ctx,
    field: &str,
    p: Option<&envoy_types::pb::envoy::r#type::v3::Percent>,
) -> Result<u32, ConfigError> {
    let Some(p) = p else {
        return Ok(1_000_000);
    };
    if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
        return Err(ctx.err(
            field,
            format!("{} is not a percentage in [0, 100]", p.value),
        ));
    }
    Ok((p.value * 10_000.0).round() as u32)
}

pub(crate) fn tracing_from_proto(
    ctx: &Ctx,
    f: &str,
    t: &Tracing,
) -> Result<TracingConfig, ConfigError> {
    let random = per_million(
        ctx,
        &format!("{f}.random_sampling"),
        t.random_sampling.as_ref(),
    )?;
    let overall = per_million(
        ctx,
        &format!("{f}.overall_sampling"),
        t.overall_sampling.as_ref(),
    )?;
    let mut cfg = TracingConfig {
        sampling_per_million: random.min(overall),
        max_path_tag_length: t
            .max_path_tag_length
            .as_ref()
            .map_or(256, |v| v.value as usize),
        ..TracingConfig::default()
    };
    let Some(provider) = &t.provider else {
        return Ok(cfg);
    };
    let pf = format!("{f}.provider");
    let any = match &provider.config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        None => {
            return Err(ctx.err(
                format!("{pf}.typed_config"),
                "the tracing provider needs its typed_config",
            ))
        }
    };
    if any.type_url != OpenTelemetryConfig::type_url() {
        return Err(ctx.err(
            format!("{pf}.typed_config"),
            format!(
                "tracing provider {:?} ({}) is not supported; use {OPENTELEMETRY_TRACER} (OpenTelemetryConfig)",
                provider.name, any.type_url
            ),
        ));
    }
    let otel = OpenTelemetryConfig::decode(any.value.as_slice()).map_err(|e| {
        ctx.err(
            format!("{pf}.typed_config"),
            format!("cannot decode OpenTelemetryConfig: {e}"),
        )
    })?;
    if otel.http_service.is_some() {
        return Err(ctx.err(
            format!("{pf}.typed_config.http_service"),
            "OTLP/HTTP is not supported; use grpc_service with google_grpc.target_uri",
        ));
    }
    cfg.service_name = otel.service_name.clone();
    let target = match otel.grpc_service.and_then(|g| g.target_specifier) {
        Some(TargetSpecifier::GoogleGrpc(g)) if !g.target_uri.is_empty() => g.target_uri,
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            return Err(ctx.err(
                format!("{pf}.typed_config.grpc_service.google_grpc.target_uri"),
                "empty collector address",
            ))
        }
        Some(TargetSpecifier::EnvoyGrpc(e)) => {
            return Err(ctx.err(
                format!("{pf}.typed_config.grpc_service.envoy_grpc"),
                format!(
                    "collector cluster {:?}: envoy_grpc is not supported; name the collector with google_grpc.target_uri (host:port)",
                    e.cluster_name
                ),
            ))
        }
        None => {
            return Err(ctx.err(
                format!("{pf}.typed_config.grpc_service"),
                "the OpenTelemetry tracer needs a grpc_service naming the collector",
            ))
        }
    };
    let uri = if target.contains("://") {
        target
    } else {
        format!("http://{target}")
    };
    let field = || format!("{pf}.typed_config.grpc_service.google_grpc.target_uri");
    match uri.parse::<http::Uri>() {
        Err(_) => {
            return Err(ctx.err(
                field(),
                format!("{uri:?} is not a valid address (expected host:port)"),
            ))
        }
        // The exporter speaks plaintext gRPC (a collector on the node or
        // behind the mesh's own mTLS); dialling a TLS port in plaintext
        // would only drop every span.
        Ok(u) if u.scheme_str() != Some("http") => {
            let why = "only plaintext collectors (host:port or http://host:port) are supported";
            return Err(ctx.err(field(), format!("{uri:?}: {why}")));
        }
        Ok(_) => {}
    }
    cfg.collector = Some(Collector::Grpc(uri));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{grpc_service, GrpcService};
    use envoy_types::pb::envoy::config::trace::v3::tracing::Http;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::util::pack_any;

    fn otel(target: TargetSpecifier) -> Option<Http> {
        Some(Http {
            name: OPENTELEMETRY_TRACER.into(),
            config_type: Some(ConfigType::TypedConfig(pack_any(OpenTelemetryConfig {
                grpc_service: Some(GrpcService {
                    target_specifier: Some(target),
                    ..Default::default()
                }),
                service_name: "svc".into(),
                ..Default::default()
            }))),
        })
    }

    #[test]
    fn sampling_and_collector() {
        let ctx = Ctx::new("Listener", "l");
        let t = Tracing {
            random_sampling: Some(Percent { value: 12.5 }),
            provider: otel(TargetSpecifier::GoogleGrpc(grpc_service::GoogleGrpc {
                target_uri: "127.0.0.1:4317".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let c = tracing_from_proto(&ctx, "tracing", &t).expect("valid");
        assert_eq!(c.sampling_per_million, 125_000);
        assert_eq!(
            c.collector,
            Some(Collector::Grpc("http://127.0.0.1:4317".into()))
        );
        assert_eq!(c.service_name, "svc");
        let d = tracing_from_proto(&ctx, "tracing", &Tracing::default()).expect("defaults");
        assert_eq!(d.sampling_per_million, 1_000_000);
        assert_eq!(d.collector, None);
    }

    #[test]
    fn unsupported_settings_name_the_field() {
        let ctx = Ctx::new("Listener", "l");
        let e = tracing_from_proto(
            &ctx,
            "tracing",
            &Tracing {
                random_sampling: Some(Percent { value: 101.0 }),
                ..Default::default()
            },
        )
        .expect_err("over 100%");
        assert_eq!(e.field, "tracing.random_sampling");
        let e = tracing_from_proto(
            &ctx,
            "tracing",
            &Tracing {
                provider: otel(TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                    cluster_name: "otel".into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
        )
        .expect_err("envoy_grpc");
        assert!(e.field.ends_with("envoy_grpc"), "{e}");
        assert!(e.reason.contains("google_grpc"), "{e}");
        let e = tracing_from_proto(
            &ctx,
            "tracing",
            &Tracing {
                provider: otel(TargetSpecifier::GoogleGrpc(grpc_service::GoogleGrpc {
                    target_uri: "https://collector.example:4317".into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
        )
        .expect_err("https collector");
        assert!(e.field.ends_with("google_grpc.target_uri"), "{e}");
        assert!(e.reason.contains("plaintext"), "{e}");
    }
}
