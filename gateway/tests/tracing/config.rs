//! xDS resources for these tests: the OpenTelemetry tracing provider, file
//! access logs in JSON or Envoy text format, and an HTTP listener routing
//! everything to one cluster with tracing and access logs set.

use std::net::SocketAddr;
use std::path::Path;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, grpc_service, substitution_format_string, DataSource, GrpcService,
    SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::trace::v3::{tracing, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier, Tracing},
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::util::pack_any;

use crate::support::any_port;
use crate::support::http::{prefix_route, route_config, to_cluster};
use crate::support::resources::addr;

pub(crate) fn tracing_cfg(percent: f64, collector: SocketAddr) -> Tracing {
    Tracing {
        random_sampling: Some(Percent { value: percent }),
        provider: Some(tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(
                OpenTelemetryConfig {
                    grpc_service: Some(GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::GoogleGrpc(
                            grpc_service::GoogleGrpc {
                                target_uri: collector.to_string(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))),
        }),
        ..Default::default()
    }
}

pub(crate) fn file_log(path: &Path, format: substitution_format_string::Format) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(
            FileAccessLog {
                path: path.display().to_string(),
                access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                    SubstitutionFormatString {
                        format: Some(format),
                        ..Default::default()
                    },
                )),
            },
        ))),
    }
}

pub(crate) fn json_format(keys: &[(&str, &str)]) -> substitution_format_string::Format {
    substitution_format_string::Format::JsonFormat(Struct {
        fields: keys
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    })
}

pub(crate) fn text_format(f: &str) -> substitution_format_string::Format {
    substitution_format_string::Format::TextFormatSource(DataSource {
        specifier: Some(data_source::Specifier::InlineString(f.into())),
        ..Default::default()
    })
}

pub(crate) fn http_listener(
    name: &str,
    cluster: &str,
    tracing: Option<Tracing>,
    logs: Vec<AccessLog>,
) -> Listener {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config(
            "r",
            &["*"],
            vec![prefix_route("all", "/", to_cluster(cluster))],
        ))),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        tracing,
        access_log: logs,
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(addr(any_port())),
        filter_chains: vec![FilterChain {
            name: format!("{name}-http"),
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
