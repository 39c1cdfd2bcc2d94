//! MeshConfig's access log and tracing settings: checked here so a typo
//! fails at load time with a path, instead of every proxy NACKing its
//! listeners.

use isthmus_gateway::accesslog::Template;

use super::{Code, Issues};
use crate::config::{AccessLogEncoding, MeshConfigSpec};

pub(super) fn mesh(spec: &MeshConfigSpec, out: &mut Issues) {
    if let Some(fmt) = spec.access_log_format.as_deref().filter(|f| !f.is_empty()) {
        match spec.access_log_encoding.unwrap_or_default() {
            AccessLogEncoding::Text => {
                if let Err(e) = Template::parse(fmt) {
                    out.push(Code::InvalidField, "spec.accessLogFormat", e.to_string());
                }
            }
            AccessLogEncoding::Json => match json_format(fmt) {
                Ok(_) => {}
                Err(e) => out.push(Code::InvalidField, "spec.accessLogFormat", e),
            },
        }
    }
    if let Some(s) = spec
        .default_config
        .as_ref()
        .and_then(|d| d.tracing.as_ref())
        .and_then(|t| t.sampling)
    {
        if !(0.0..=100.0).contains(&s) {
            out.push(
                Code::InvalidField,
                "spec.defaultConfig.tracing.sampling",
                format!("sampling {s} is not a percentage in [0, 100]"),
            );
        }
    }
    for (i, p) in spec.extension_providers.iter().enumerate() {
        if let Some(o) = &p.opentelemetry {
            if o.service.trim().is_empty() {
                out.push(
                    Code::InvalidField,
                    format!("spec.extensionProviders[{i}].opentelemetry.service"),
                    "the collector's host name or IP is empty",
                );
            }
            if o.port == 0 {
                out.push(
                    Code::InvalidField,
                    format!("spec.extensionProviders[{i}].opentelemetry.port"),
                    "port 0 is not a collector port",
                );
            }
        }
    }
    if let Some(d) = &spec.default_providers {
        for (i, name) in d.tracing.iter().enumerate() {
            let found = spec.extension_providers.iter().find(|p| &p.name == name);
            if found.and_then(|p| p.opentelemetry.as_ref()).is_none() {
                out.push(
                    Code::InvalidField,
                    format!("spec.defaultProviders.tracing[{i}]"),
                    format!(
                        "{name:?} is not an extensionProviders entry with opentelemetry (the only tracing provider supported)"
                    ),
                );
            }
        }
    }
}

/// `accessLogFormat` with JSON encoding: a JSON object whose values are
/// format strings (Istio's form), in key order.
pub fn json_format(fmt: &str) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value = serde_json::from_str(fmt)
        .map_err(|e| format!("with accessLogEncoding JSON, accessLogFormat must be a JSON object of format strings: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("with accessLogEncoding JSON, accessLogFormat must be a JSON object")?;
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let s = v.as_str().ok_or_else(|| {
            format!("accessLogFormat key {k:?}: the value must be a format string")
        })?;
        Template::parse(s).map_err(|e| format!("accessLogFormat key {k:?}: {e}"))?;
        out.push((k.clone(), s.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DefaultProviders, ProxyDefaults, ProxyTracing};

    fn issues(spec: &MeshConfigSpec) -> Vec<String> {
        let mut out = Issues(Vec::new());
        mesh(spec, &mut out);
        out.0
            .into_iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect()
    }

    #[test]
    fn bad_settings_are_named() {
        let ok = MeshConfigSpec {
            access_log_format: Some(r#"{"code":"%RESPONSE_CODE%"}"#.into()),
            ..Default::default()
        };
        assert!(issues(&ok).is_empty(), "{:?}", issues(&ok));
        let bad = MeshConfigSpec {
            access_log_encoding: Some(AccessLogEncoding::Text),
            access_log_format: Some("%NOPE%".into()),
            default_config: Some(ProxyDefaults {
                tracing: Some(ProxyTracing {
                    sampling: Some(150.0),
                }),
            }),
            default_providers: Some(DefaultProviders {
                tracing: vec!["missing".into()],
            }),
            ..Default::default()
        };
        let got = issues(&bad);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("spec.accessLogFormat: ") && got[0].contains("NOPE"));
        assert!(got[1].starts_with("spec.defaultConfig.tracing.sampling"));
        assert!(got[2].starts_with("spec.defaultProviders.tracing[0]"));
        let json = MeshConfigSpec {
            access_log_format: Some("[1]".into()),
            ..Default::default()
        };
        assert_eq!(issues(&json).len(), 1);
    }
}
