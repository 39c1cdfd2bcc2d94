//! `access_log` entries (HTTP connection manager and tcp_proxy) →
//! [`AccessLogConfig`]. Supported loggers: `envoy.access_loggers.file`
//! (`FileAccessLog`), `envoy.access_loggers.stdout` / `stderr`; formats:
//! `text_format_source` (inline), `text_format`, `json_format`, the
//! deprecated `format` / `json_format` of `FileAccessLog`; none = JSON.

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, substitution_format_string, SubstitutionFormatString,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    stderr_access_log, stdout_access_log, StderrAccessLog, StdoutAccessLog,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use prost::{Message, Name};

use super::{AccessLogConfig, Destination, JsonField, LogFormat, Template};
use crate::config::{ConfigError, Ctx};

fn decode<T: Message + Default + Name>(
    ctx: &Ctx,
    f: &str,
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<T, ConfigError> {
    T::decode(any.value.as_slice())
        .map_err(|e| ctx.err(f, format!("cannot decode {}: {e}", T::full_name())))
}

fn template(ctx: &Ctx, f: &str, s: &str) -> Result<Template, ConfigError> {
    Template::parse(s).map_err(|e| ctx.err(f, e.to_string()))
}

fn json_fields(ctx: &Ctx, f: &str, s: &Struct) -> Result<Vec<(String, JsonField)>, ConfigError> {
    let mut out = Vec::with_capacity(s.fields.len());
    for (k, v) in &s.fields {
        let ff = format!("{f}.{k}");
        let field = match &v.kind {
            Some(Kind::StringValue(t)) => JsonField::Template(template(ctx, &ff, t)?),
            Some(Kind::NumberValue(n)) => JsonField::Literal(
                serde_json::Number::from_f64(*n)
                    .map_or_else(|| "null".to_string(), |n| n.to_string()),
            ),
            Some(Kind::BoolValue(b)) => JsonField::Literal(b.to_string()),
            Some(Kind::NullValue(_)) | None => JsonField::Literal("null".into()),
            Some(Kind::StructValue(inner)) => JsonField::Object(json_fields(ctx, &ff, inner)?),
            Some(Kind::ListValue(_)) => {
                return Err(ctx.err(
                    ff,
                    "lists are not supported in json_format; use a string or an object",
                ))
            }
        };
        out.push((k.clone(), field));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn substitution(
    ctx: &Ctx,
    f: &str,
    s: &SubstitutionFormatString,
) -> Result<LogFormat, ConfigError> {
    if !s.formatters.is_empty() {
        return Err(ctx.err(
            format!("{f}.formatters"),
            "formatter extensions are not supported",
        ));
    }
    #[allow(deprecated)]
    match &s.format {
        None => Ok(LogFormat::default_json()),
        Some(substitution_format_string::Format::TextFormat(t)) => Ok(LogFormat::Text(template(
            ctx,
            &format!("{f}.text_format"),
            t,
        )?)),
        Some(substitution_format_string::Format::JsonFormat(j)) => Ok(LogFormat::Json(
            json_fields(ctx, &format!("{f}.json_format"), j)?,
        )),
        Some(substitution_format_string::Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineString(t)) => Ok(LogFormat::Text(template(
                ctx,
                &format!("{f}.text_format_source.inline_string"),
                t,
            )?)),
            Some(data_source::Specifier::InlineBytes(b)) => {
                let t = std::str::from_utf8(b).map_err(|_| {
                    ctx.err(format!("{f}.text_format_source.inline_bytes"), "not UTF-8")
                })?;
                Ok(LogFormat::Text(template(
                    ctx,
                    &format!("{f}.text_format_source.inline_bytes"),
                    t,
                )?))
            }
            _ => Err(ctx.err(
                format!("{f}.text_format_source"),
                "only inline_string / inline_bytes are supported",
            )),
        },
    }
}

/// Converts one filter's `access_log` list; `f` names the field for errors.
pub(crate) fn access_logs_from_proto(
    ctx: &Ctx,
    f: &str,
    logs: &[AccessLog],
) -> Result<Vec<AccessLogConfig>, ConfigError> {
    let mut out = Vec::with_capacity(logs.len());
    for (i, l) in logs.iter().enumerate() {
        let lf = format!("{f}[{i}]");
        if l.filter.is_some() {
            return Err(ctx.err(
                format!("{lf}.filter"),
                "access log filters are not supported; every request is logged",
            ));
        }
        let any = match &l.config_type {
            Some(access_log::ConfigType::TypedConfig(a)) => a,
            None => return Err(ctx.err(format!("{lf}.typed_config"), "missing")),
        };
        let tf = format!("{lf}.typed_config");
        let cfg = if any.type_url == FileAccessLog::type_url() {
            let fl: FileAccessLog = decode(ctx, &tf, any)?;
            if fl.path.is_empty() {
                return Err(ctx.err(format!("{tf}.path"), "empty"));
            }
            let destination = match fl.path.as_str() {
                "/dev/stdout" => Destination::Stdout,
                "/dev/stderr" => Destination::Stderr,
                p => Destination::File(p.into()),
            };
            #[allow(deprecated)]
            let format = match &fl.access_log_format {
                None => LogFormat::default_json(),
                Some(file_access_log::AccessLogFormat::Format(t)) => {
                    LogFormat::Text(template(ctx, &format!("{tf}.format"), t)?)
                }
                Some(file_access_log::AccessLogFormat::JsonFormat(j)) => {
                    LogFormat::Json(json_fields(ctx, &format!("{tf}.json_format"), j)?)
                }
                Some(file_access_log::AccessLogFormat::LogFormat(s)) => {
                    substitution(ctx, &format!("{tf}.log_format"), s)?
                }
                Some(file_access_log::AccessLogFormat::TypedJsonFormat(_)) => {
                    return Err(ctx.err(
                        format!("{tf}.typed_json_format"),
                        "not supported; use log_format.json_format",
                    ))
                }
            };
            AccessLogConfig {
                destination,
                format,
            }
        } else if any.type_url == StdoutAccessLog::type_url() {
            let s: StdoutAccessLog = decode(ctx, &tf, any)?;
            let format = match &s.access_log_format {
                None => LogFormat::default_json(),
                Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => {
                    substitution(ctx, &format!("{tf}.log_format"), f)?
                }
            };
            AccessLogConfig {
                destination: Destination::Stdout,
                format,
            }
        } else if any.type_url == StderrAccessLog::type_url() {
            let s: StderrAccessLog = decode(ctx, &tf, any)?;
            let format = match &s.access_log_format {
                None => LogFormat::default_json(),
                Some(stderr_access_log::AccessLogFormat::LogFormat(f)) => {
                    substitution(ctx, &format!("{tf}.log_format"), f)?
                }
            };
            AccessLogConfig {
                destination: Destination::Stderr,
                format,
            }
        } else {
            return Err(ctx.err(
                tf,
                format!(
                    "access logger {:?} ({}) is not supported (supported: envoy.access_loggers.file, envoy.access_loggers.stdout, envoy.access_loggers.stderr)",
                    l.name, any.type_url
                ),
            ));
        };
        out.push(cfg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::DataSource;
    use envoy_types::pb::google::protobuf::Value;
    use envoy_types::util::pack_any;

    fn log(any: envoy_types::pb::google::protobuf::Any) -> AccessLog {
        AccessLog {
            name: "envoy.access_loggers.file".into(),
            filter: None,
            config_type: Some(access_log::ConfigType::TypedConfig(any)),
        }
    }

    #[test]
    fn file_text_and_stdout_json() {
        let ctx = Ctx::new("Listener", "l");
        let text = log(pack_any(FileAccessLog {
            path: "/var/log/a.log".into(),
            access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::TextFormatSource(
                        DataSource {
                            specifier: Some(data_source::Specifier::InlineString(
                                "%RESPONSE_CODE%\n".into(),
                            )),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            )),
        }));
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "code".to_string(),
            Value {
                kind: Some(Kind::StringValue("%RESPONSE_CODE%".into())),
            },
        );
        let json = log(pack_any(StdoutAccessLog {
            access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::JsonFormat(Struct {
                        fields: fields.into_iter().collect(),
                    })),
                    ..Default::default()
                },
            )),
        }));
        let got = access_logs_from_proto(&ctx, "access_log", &[text, json]).expect("valid");
        assert_eq!(
            got[0].destination,
            Destination::File("/var/log/a.log".into())
        );
        assert!(matches!(got[0].format, LogFormat::Text(_)));
        assert_eq!(got[1].destination, Destination::Stdout);
        let e = super::super::Entry {
            response_code: 503,
            ..Default::default()
        };
        assert_eq!(got[1].format.render(&e), "{\"code\":503}\n");
        assert_eq!(got[0].format.render(&e), "503\n");
    }

    #[test]
    #[allow(deprecated)] // FileAccessLog.format is what older control planes send.
    fn errors_name_the_field() {
        let ctx = Ctx::new("Listener", "l");
        let bad = log(pack_any(FileAccessLog {
            path: "/tmp/x".into(),
            access_log_format: Some(file_access_log::AccessLogFormat::Format("%BOGUS%".into())),
        }));
        let e = access_logs_from_proto(&ctx, "hcm.access_log", &[bad]).expect_err("bogus");
        assert_eq!(e.field, "hcm.access_log[0].typed_config.format");
        assert!(e.reason.contains("BOGUS"), "{e}");
        let other = log(pack_any(Struct::default()));
        let e = access_logs_from_proto(&ctx, "a", &[other]).expect_err("unknown logger");
        assert!(e.reason.contains("not supported"), "{e}");
    }
}
