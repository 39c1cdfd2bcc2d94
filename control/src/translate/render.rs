//! A stable, readable text form of generated resources for golden tests and
//! debug dumps: the prost structs' `{:#?}` with every packed `Any` decoded
//! in place (for the types translation emits) and fields at their protobuf
//! defaults left out.
//!
//! Protobuf maps are `HashMap`s in envoy-types; translation never puts more
//! than one entry in one, so their order is stable here too.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use isthmus_xds::Resource;

fn debug_of<T: Message + Name + Default + std::fmt::Debug>(bytes: &[u8]) -> Option<String> {
    T::decode(bytes).ok().map(|m| format!("{m:#?}"))
}

/// `{:#?}` of the message packed in `any`, when its type is one we emit.
fn decode(type_url: &str, bytes: &[u8]) -> Option<String> {
    macro_rules! table {
        ($($t:ty),*) => {
            $(if type_url == <$t>::type_url() { return debug_of::<$t>(bytes); })*
        };
    }
    table!(
        Cluster,
        ClusterLoadAssignment,
        Listener,
        RouteConfiguration,
        Secret,
        HttpConnectionManager,
        TcpProxy,
        Router,
        HttpFault,
        TlsInspector,
        UpstreamTlsContext,
        DownstreamTlsContext,
        HttpProtocolOptions
    );
    if type_url == isthmus_gateway::dnsproxy::NAME_TABLE_TYPE {
        let table = isthmus_gateway::dnsproxy::NameTable::decode(bytes).ok()?;
        return Some(format!("{table:#?}"));
    }
    None
}

/// Renders one packed resource.
pub fn render_any(any: &Any) -> String {
    let text = decode(&any.type_url, &any.value).unwrap_or_else(|| format!("{any:#?}"));
    collapse(&strip_defaults(&expand(&text)))
}

/// Renders resources as `--- NAME (TYPE)` sections, in the given order.
pub fn render_resources(resources: &[Resource]) -> String {
    let mut out = String::new();
    for r in resources {
        let short = r
            .body
            .type_url
            .rsplit('.')
            .next()
            .unwrap_or(&r.body.type_url);
        out.push_str(&format!("--- {} ({short})\n", r.name));
        out.push_str(&render_any(&r.body));
        out.push('\n');
    }
    out
}

/// Replaces `value: [bytes]` of every nested `Any` with its decoded form.
fn expand(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let type_url = trimmed
            .strip_prefix("type_url: \"")
            .and_then(|rest| rest.strip_suffix("\","));
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
        if let (Some(type_url), true) = (type_url, next.starts_with("value: [")) {
            let mut bytes = Vec::new();
            let mut j = i + 1;
            let mut ok = true;
            if next != "value: []," {
                j += 1;
                while j < lines.len() && lines[j].trim() != "]," {
                    match lines[j].trim().trim_end_matches(',').parse::<u8>() {
                        Ok(b) => bytes.push(b),
                        Err(_) => ok = false,
                    }
                    j += 1;
                }
            }
            if let (true, Some(decoded)) = (ok, decode(type_url, &bytes)) {
                out.push(format!("{indent}type_url: \"{type_url}\","));
                let decoded = expand(&decoded);
                let mut first = true;
                for d in decoded.lines() {
                    if first {
                        out.push(format!("{indent}value: {d}"));
                        first = false;
                    } else {
                        out.push(format!("{indent}{d}"));
                    }
                }
                if let Some(last) = out.last_mut() {
                    last.push(',');
                }
                i = j + 1;
                continue;
            }
        }
        out.push(line.to_string());
        i += 1;
    }
    out.join("\n")
}

/// Drops `field: <default>,` lines (None, 0, false, empty string, list or
/// map, and enum zero values named Unspecified/Default/Auto).
fn strip_defaults(text: &str) -> String {
    const DEFAULTS: [&str; 10] = [
        "None",
        "0",
        "0.0",
        "false",
        "\"\"",
        "[]",
        "{}",
        "Unspecified",
        "Default",
        "Auto",
    ];
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim();
            let Some((key, value)) = t.split_once(": ") else {
                return true;
            };
            let value = value.trim_end_matches(',');
            let is_field = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            !(is_field && DEFAULTS.contains(&value))
        })
        .collect();
    let mut s = kept.join("\n");
    s.push('\n');
    s
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Folds single-item wrappers (`Some(`, oneof variants) onto one line with
/// their content and empty structs onto `Name {}`, so `Some(PortValue(80))`
/// reads as one value instead of five lines.
fn collapse(text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    loop {
        let mut changed = false;
        let mut i = 0;
        while i + 1 < lines.len() {
            let opener = lines[i].trim_end().to_string();
            let indent = indent_of(&opener);
            // `Name {` directly followed by its `}`.
            if opener.ends_with('{')
                && indent_of(&lines[i + 1]) == indent
                && lines[i + 1].trim().starts_with('}')
            {
                let close = lines[i + 1].trim().to_string();
                lines[i] = format!("{opener}{close}");
                lines.remove(i + 1);
                changed = true;
                continue;
            }
            if !opener.ends_with('(') {
                i += 1;
                continue;
            }
            let Some(j) = (i + 1..lines.len()).find(|&k| indent_of(&lines[k]) <= indent) else {
                i += 1;
                continue;
            };
            let close = lines[j].trim().to_string();
            let inner_items = (i + 1..j)
                .filter(|&k| indent_of(&lines[k]) == indent + 4)
                .count();
            let single_line = j == i + 2;
            let single_block = j > i + 2
                && inner_items == 2
                && indent_of(&lines[j - 1]) == indent + 4
                && !lines[i + 1].trim().ends_with(',');
            if !(close.starts_with(')') && (single_line || single_block)) {
                i += 1;
                continue;
            }
            let first = lines[i + 1].trim().to_string();
            if single_line {
                lines[i] = format!("{opener}{}{close}", first.trim_end_matches(','));
                lines.drain(i + 1..=j);
            } else {
                let last = lines[j - 1].trim().trim_end_matches(',').to_string();
                let pad = " ".repeat(indent);
                let mut replacement = vec![format!("{opener}{first}")];
                replacement.extend(
                    lines[i + 2..j - 1]
                        .iter()
                        .map(|l| l.get(4..).unwrap_or(l).to_string()),
                );
                replacement.push(format!("{pad}{last}{close}"));
                lines.splice(i..=j, replacement);
            }
            changed = true;
        }
        if !changed {
            break;
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrappers_fold() {
        let text = "A {\n    x: Some(\n        PortValue(\n            80,\n        ),\n    ),\n    y: Some(\n        B {\n            z: 1,\n        },\n    ),\n    e: C {\n    },\n}\n";
        assert_eq!(
            collapse(text),
            "A {\n    x: Some(PortValue(80)),\n    y: Some(B {\n        z: 1,\n    }),\n    e: C {},\n}\n"
        );
    }

    use super::*;
    use crate::translate::proto::any;

    #[test]
    fn nested_any_is_decoded_and_defaults_dropped() {
        let hcm = HttpConnectionManager {
            stat_prefix: "p".into(),
            http_filters: vec![envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(
                    envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(
                        any(Router::default()),
                    ),
                ),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render_any(&any(hcm));
        assert!(text.contains("stat_prefix: \"p\""), "{text}");
        assert!(text.contains("value: Router {"), "{text}");
        assert!(!text.contains("server_name"), "{text}");
        assert!(!text.contains("value: ["), "{text}");
    }
}
