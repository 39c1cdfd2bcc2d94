//! Checks one resource on its own, as Istio's validating webhook would.
//! Cross-resource checks live in `crate::analyze`. Each issue carries a
//! field path (`spec.http[0].route[1].weight`) that the reader turns into a
//! line and column.

use std::collections::BTreeSet;

use crate::analyze::Code;

use super::*;

pub(crate) mod jwks;
mod networking;
mod security;
mod telemetry;

pub use jwks::validate_jwks;
pub use telemetry::json_format as access_log_json_format;

/// One problem found in one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: Code,
    /// Dotted field path inside the document, e.g. `spec.hosts[0]`.
    pub path: String,
    pub message: String,
}

struct Issues(Vec<Issue>);

impl Issues {
    fn push(&mut self, code: Code, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            code,
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates one resource; an empty result means it is acceptable. Issues
/// with an Error-severity code make the file source reject the document.
pub fn validate(resource: &Resource) -> Vec<Issue> {
    let mut out = Issues(Vec::new());
    validate_meta(resource.metadata(), &mut out);
    match resource {
        Resource::VirtualService(o) => networking::virtual_service(&o.spec, &mut out),
        Resource::DestinationRule(o) => networking::destination_rule(&o.spec, &mut out),
        Resource::Gateway(o) => networking::gateway(&o.spec, &mut out),
        Resource::ServiceEntry(o) => networking::service_entry(&o.spec, &mut out),
        Resource::WorkloadEntry(o) => networking::workload_entry(&o.spec, "spec", &mut out),
        Resource::Sidecar(o) => networking::sidecar(&o.spec, &mut out),
        Resource::PeerAuthentication(o) => security::peer_authentication(&o.spec, &mut out),
        Resource::AuthorizationPolicy(o) => security::authorization_policy(&o.spec, &mut out),
        Resource::RequestAuthentication(o) => security::request_authentication(&o.spec, &mut out),
        Resource::ServiceExport(_) => {}
        Resource::ServiceImport(o) => {
            for (i, p) in o.spec.ports.iter().enumerate() {
                check_port(p.port, &format!("spec.ports[{i}].port"), &mut out);
            }
        }
        Resource::MeshConfig(o) => security::mesh_config(&o.spec, &mut out),
        Resource::Secret(o) => {
            for (path, reason) in o.problems() {
                out.push(Code::InvalidField, path, reason);
            }
        }
    }
    out.0
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn validate_meta(meta: &ObjectMeta, out: &mut Issues) {
    if meta.name.is_empty() {
        out.push(
            Code::MissingTypeInfo,
            "metadata",
            "metadata.name is required",
        );
    } else if !is_dns1123_subdomain(&meta.name) {
        out.push(
            Code::InvalidField,
            "metadata.name",
            format!(
                "name {:?} is not a valid DNS-1123 subdomain (lower case letters, digits, '-' and '.')",
                meta.name
            ),
        );
    }
    if let Some(ns) = &meta.namespace {
        if !is_dns1123_label(ns) {
            out.push(
                Code::InvalidField,
                "metadata.namespace",
                format!("namespace {ns:?} is not a valid DNS-1123 label"),
            );
        }
    }
}

fn check_port(port: u32, path: &str, out: &mut Issues) {
    if port == 0 || port > 65535 {
        out.push(
            Code::InvalidField,
            path,
            format!("port {port} is out of range 1-65535"),
        );
    }
}

fn check_string_match(m: &StringMatch, path: &str, out: &mut Issues) {
    match m.set_count() {
        1 => {}
        0 => out.push(
            Code::InvalidStringMatch,
            path,
            "string match is empty: set one of exact, prefix or regex",
        ),
        _ => out.push(
            Code::InvalidStringMatch,
            path,
            "string match sets more than one of exact, prefix and regex",
        ),
    }
}

/// Istio refuses durations below one millisecond (other than zero).
fn check_duration(d: &Option<Duration>, path: &str, out: &mut Issues) {
    if let Some(d) = d {
        let v = d.as_std();
        if !v.is_zero() && v < std::time::Duration::from_millis(1) {
            out.push(
                Code::InvalidDuration,
                path,
                format!("duration {d} is shorter than the 1ms minimum"),
            );
        }
    }
}

fn check_weights(weights: &[Option<i32>], path: &str, out: &mut Issues) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w {
            if *w < 0 {
                out.push(
                    Code::WeightsNotHundred,
                    format!("{path}[{i}].weight"),
                    format!("weight {w} is negative"),
                );
                return;
            }
        }
    }
    if weights.len() < 2 {
        return;
    }
    let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
    if sum != 100 {
        out.push(
            Code::WeightsNotHundred,
            path,
            format!(
                "destination weights sum to {sum}, not 100 ({})",
                weights
                    .iter()
                    .map(|w| w.map_or("unset".to_string(), |w| w.to_string()))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        );
    }
}
