//! MeshConfig's observability settings, with Istio's `meshConfig` names:
//! `accessLogFile`, `accessLogEncoding`, `accessLogFormat`, `enableTracing`,
//! `defaultConfig.tracing.sampling`, `extensionProviders[].opentelemetry`
//! and `defaultProviders.tracing`. Translation: `crate::translate::telemetry`.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccessLogEncoding {
    #[default]
    Json,
    Text,
}

/// `defaultConfig` (Istio's ProxyConfig defaults); only tracing is read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<ProxyTracing>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyTracing {
    /// Percentage of requests sampled when the caller made no decision,
    /// 0.0–100.0 (Istio's default: 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshExtensionProvider {
    pub name: String,
    /// An OTLP/gRPC collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetryProvider>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenTelemetryProvider {
    /// Host name or IP of the collector, as the proxies reach it.
    pub service: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DefaultProviders {
    /// Names of `extensionProviders` that receive spans (the first is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
}

/// Istio's default `defaultConfig.tracing.sampling`.
pub const DEFAULT_TRACE_SAMPLING: f64 = 1.0;

impl super::MeshConfigSpec {
    /// The sampling percentage, when tracing is on: `enableTracing: true`
    /// or a default tracing provider.
    pub fn trace_sampling(&self) -> Option<f64> {
        let providers = self
            .default_providers
            .as_ref()
            .is_some_and(|p| !p.tracing.is_empty());
        if !(self.enable_tracing.unwrap_or(false) || providers) {
            return None;
        }
        Some(
            self.default_config
                .as_ref()
                .and_then(|d| d.tracing.as_ref())
                .and_then(|t| t.sampling)
                .unwrap_or(DEFAULT_TRACE_SAMPLING),
        )
    }

    /// The collector of the first default tracing provider, `host:port`.
    pub fn trace_collector(&self) -> Option<String> {
        let name = self.default_providers.as_ref()?.tracing.first()?;
        let p = self
            .extension_providers
            .iter()
            .find(|p| &p.name == name)?
            .opentelemetry
            .as_ref()?;
        let host = if p.service.contains(':') && !p.service.starts_with('[') {
            format!("[{}]", p.service)
        } else {
            p.service.clone()
        };
        Some(format!("{host}:{}", p.port))
    }

    /// `accessLogFile` when set (access logging is off otherwise, as in Istio).
    pub fn access_log_path(&self) -> Option<&str> {
        self.access_log_file
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
    }
}
