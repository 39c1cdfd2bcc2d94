//! MeshConfig's tracing and access-log settings → every listener's HTTP
//! connection managers (`tracing`, `access_log`) and tcp_proxy filters
//! (`access_log`), in Envoy's own terms so an Envoy given the same xDS
//! traces and logs the same way:
//! - tracing: `random_sampling` from `defaultConfig.tracing.sampling`, the
//!   `envoy.tracers.opentelemetry` provider with `google_grpc.target_uri`
//!   naming the default provider's collector;
//! - access logs: `envoy.access_loggers.file` (`/dev/stdout` or a path)
//!   with `log_format.json_format` (Istio's default JSON keys, or
//!   `accessLogFormat`) or `log_format.text_format_source`.
//!
//! Applied after the per-kind listener builders, so every listener kind
//! gets the same settings without each builder knowing about them.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, grpc_service, substitution_format_string, DataSource, GrpcService,
    SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::trace::v3::{tracing, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::Tracing, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use isthmus_gateway::accesslog::{DEFAULT_JSON_FORMAT, DEFAULT_TEXT_FORMAT};
use prost::{Message, Name};

use super::proto::{any, HTTP_CONNECTION_MANAGER, TCP_PROXY};
use crate::config::{AccessLogEncoding, MeshConfigSpec};

pub const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";
pub const OPENTELEMETRY_TRACER: &str = "envoy.tracers.opentelemetry";

/// What MeshConfig asks of every connection manager and tcp_proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TelemetrySettings {
    pub tracing: Option<Tracing>,
    pub access_log: Vec<AccessLog>,
}

impl TelemetrySettings {
    pub fn from_mesh(spec: &MeshConfigSpec) -> TelemetrySettings {
        TelemetrySettings {
            tracing: spec
                .trace_sampling()
                .map(|s| tracing_proto(s, spec.trace_collector())),
            access_log: spec
                .access_log_path()
                .map(|path| vec![file_access_log(path, spec)])
                .unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tracing.is_none() && self.access_log.is_empty()
    }
}

fn tracing_proto(sampling: f64, collector: Option<String>) -> Tracing {
    Tracing {
        random_sampling: Some(Percent {
            value: sampling.clamp(0.0, 100.0),
        }),
        provider: collector.map(|target_uri| tracing::Http {
            name: OPENTELEMETRY_TRACER.to_string(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(any(
                OpenTelemetryConfig {
                    grpc_service: Some(GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::GoogleGrpc(
                            grpc_service::GoogleGrpc {
                                target_uri,
                                stat_prefix: "otel".to_string(),
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

fn string_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn file_access_log(path: &str, spec: &MeshConfigSpec) -> AccessLog {
    let custom = spec
        .access_log_format
        .as_deref()
        .filter(|f| !f.trim().is_empty());
    let format = match spec.access_log_encoding.unwrap_or_default() {
        AccessLogEncoding::Text => {
            let text = custom.map_or_else(
                || DEFAULT_TEXT_FORMAT.to_string(),
                |f| {
                    if f.ends_with('\n') {
                        f.to_string()
                    } else {
                        format!("{f}\n")
                    }
                },
            );
            substitution_format_string::Format::TextFormatSource(DataSource {
                specifier: Some(data_source::Specifier::InlineString(text)),
                ..Default::default()
            })
        }
        AccessLogEncoding::Json => {
            // Validation rejected a MeshConfig whose JSON format does not
            // parse, so the default here only covers an unset format.
            let fields: BTreeMap<String, String> = custom
                .and_then(|f| crate::config::validate::access_log_json_format(f).ok())
                .map(|v| v.into_iter().collect())
                .unwrap_or_else(|| {
                    DEFAULT_JSON_FORMAT
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                });
            substitution_format_string::Format::JsonFormat(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k, string_value(&v)))
                    .collect(),
            })
        }
    };
    AccessLog {
        name: FILE_ACCESS_LOG.to_string(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(any(FileAccessLog {
            path: path.to_string(),
            access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(format),
                    ..Default::default()
                },
            )),
        }))),
    }
}

/// Rewrites every connection manager and tcp_proxy of `listeners` in place.
pub fn decorate(settings: &TelemetrySettings, listeners: &mut [Listener]) {
    if settings.is_empty() {
        return;
    }
    for l in listeners {
        for chain in l
            .filter_chains
            .iter_mut()
            .chain(l.default_filter_chain.iter_mut())
        {
            for f in chain.filters.iter_mut() {
                let Some(filter::ConfigType::TypedConfig(a)) = f.config_type.as_mut() else {
                    continue;
                };
                if f.name == HTTP_CONNECTION_MANAGER
                    && a.type_url == HttpConnectionManager::type_url()
                {
                    // Built by this process a moment ago: decoding cannot fail
                    // unless the builders changed type; then it is left alone.
                    if let Ok(mut hcm) = HttpConnectionManager::decode(a.value.as_slice()) {
                        if hcm.tracing.is_none() {
                            hcm.tracing = settings.tracing.clone();
                        }
                        hcm.access_log.extend(settings.access_log.iter().cloned());
                        *a = any(hcm);
                    }
                } else if f.name == TCP_PROXY && a.type_url == TcpProxy::type_url() {
                    if settings.access_log.is_empty() {
                        continue;
                    }
                    if let Ok(mut tp) = TcpProxy::decode(a.value.as_slice()) {
                        tp.access_log.extend(settings.access_log.iter().cloned());
                        *a = any(tp);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DefaultProviders, MeshExtensionProvider, OpenTelemetryProvider};
    use crate::translate::listener::{hcm_filter, hcm_rds, tcp_proxy_filter};
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;

    fn mesh() -> MeshConfigSpec {
        MeshConfigSpec {
            cluster_id: "a".into(),
            access_log_file: Some("/dev/stdout".into()),
            default_providers: Some(DefaultProviders {
                tracing: vec!["otel".into()],
            }),
            extension_providers: vec![MeshExtensionProvider {
                name: "otel".into(),
                opentelemetry: Some(OpenTelemetryProvider {
                    service: "127.0.0.9".into(),
                    port: 4317,
                }),
            }],
            ..Default::default()
        }
    }

    fn listener() -> Listener {
        Listener {
            name: "l".into(),
            filter_chains: vec![
                FilterChain {
                    filters: vec![hcm_filter(hcm_rds("s", "80"))],
                    ..Default::default()
                },
                FilterChain {
                    filters: vec![tcp_proxy_filter("s", "c")],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn decode<T: Message + Default>(l: &Listener, chain: usize) -> T {
        match &l.filter_chains[chain].filters[0].config_type {
            Some(filter::ConfigType::TypedConfig(a)) => {
                T::decode(a.value.as_slice()).expect("decodes")
            }
            _ => panic!("typed config expected"),
        }
    }

    #[test]
    fn mesh_config_reaches_hcm_and_tcp_proxy_and_the_gateway_accepts_it() {
        let s = TelemetrySettings::from_mesh(&mesh());
        let mut ls = vec![listener()];
        decorate(&s, &mut ls);
        let hcm: HttpConnectionManager = decode(&ls[0], 0);
        let t = hcm.tracing.expect("tracing");
        assert_eq!(t.random_sampling.map(|p| p.value), Some(1.0));
        assert_eq!(hcm.access_log.len(), 1);
        let tp: TcpProxy = decode(&ls[0], 1);
        assert_eq!(tp.access_log.len(), 1);
        // The data plane accepts what we produce (no NACK).
        let cfg = isthmus_gateway::config::listener_from_proto(&Listener {
            address: Some(super::super::proto::socket_address("127.0.0.1", 0)),
            filter_chains: ls[0].filter_chains[..1].to_vec(),
            ..ls[0].clone()
        })
        .expect("gateway accepts");
        let http = cfg
            .filter_chains
            .iter()
            .find_map(|c| match &c.filter {
                isthmus_gateway::config::NetworkFilter::Http(h) => Some(h.clone()),
                _ => None,
            })
            .expect("http chain");
        let tracing = http.tracing.expect("tracing converted");
        assert_eq!(tracing.sampling_per_million, 10_000);
        assert_eq!(
            tracing.collector,
            Some(isthmus_gateway::trace::Collector::Grpc(
                "http://127.0.0.9:4317".into()
            ))
        );
        assert_eq!(
            http.access_log[0].destination,
            isthmus_gateway::accesslog::Destination::Stdout
        );
    }

    #[test]
    fn nothing_configured_changes_nothing_and_text_encoding_is_used() {
        let empty = TelemetrySettings::from_mesh(&MeshConfigSpec::default());
        assert!(empty.is_empty());
        let mut ls = vec![listener()];
        let before = ls.clone();
        decorate(&empty, &mut ls);
        assert_eq!(ls, before);

        let mut m = mesh();
        m.access_log_encoding = Some(AccessLogEncoding::Text);
        m.access_log_file = Some("/tmp/access.log".into());
        let s = TelemetrySettings::from_mesh(&m);
        let Some(access_log::ConfigType::TypedConfig(a)) = &s.access_log[0].config_type else {
            panic!("typed config expected");
        };
        let f = FileAccessLog::decode(a.value.as_slice()).expect("decodes");
        assert_eq!(f.path, "/tmp/access.log");
        let Some(file_access_log::AccessLogFormat::LogFormat(sfs)) = f.access_log_format else {
            panic!("log_format expected");
        };
        assert!(matches!(
            sfs.format,
            Some(substitution_format_string::Format::TextFormatSource(_))
        ));
    }
}
