//! Envoy's substitution format strings (`%START_TIME%`, `%REQ(X?Y):N%`, ...)
//! parsed once when configuration arrives and rendered per log line, as
//! text or as JSON (`json_format`: a value that is a single command keeps
//! its type, so `%RESPONSE_CODE%` is a number and a missing value `null`).

use serde::Serialize;

use super::Entry;

/// Istio's default text format (`meshConfig.accessLogFormat` unset, TEXT).
pub const DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON fields, plus the workload, principal and cluster
/// fields of the Istio metrics (as `FILTER_STATE` keys, which an Envoy
/// given the same configuration accepts and prints as `null`).
pub const DEFAULT_JSON_FORMAT: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("trace_id", "%TRACE_ID%"),
    ("source_principal", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("destination_principal", "%UPSTREAM_PEER_URI_SAN%"),
    ("reporter", "%FILTER_STATE(isthmus.reporter:PLAIN)%"),
    (
        "source_workload",
        "%FILTER_STATE(isthmus.source_workload:PLAIN)%",
    ),
    (
        "source_namespace",
        "%FILTER_STATE(isthmus.source_namespace:PLAIN)%",
    ),
    (
        "destination_workload",
        "%FILTER_STATE(isthmus.destination_workload:PLAIN)%",
    ),
    (
        "destination_namespace",
        "%FILTER_STATE(isthmus.destination_namespace:PLAIN)%",
    ),
    (
        "destination_service",
        "%FILTER_STATE(isthmus.destination_service:PLAIN)%",
    ),
    ("cluster", "%FILTER_STATE(isthmus.cluster:PLAIN)%"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("at byte {at}: command started with '%' is not closed")]
    Unterminated { at: usize },
    #[error("at byte {at}: unsupported command %{name}% (supported: {SUPPORTED})")]
    Unsupported { at: usize, name: String },
    #[error("at byte {at}: %{name}% {reason}")]
    Argument {
        at: usize,
        name: String,
        reason: &'static str,
    },
    #[error("json_format key {key:?}: only strings, numbers, booleans, null and nested objects are supported")]
    JsonValue { key: String },
}

const SUPPORTED: &str = "START_TIME, REQ, RESP, PROTOCOL, RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS, CONNECTION_TERMINATION_DETAILS, UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, BYTES_SENT, DURATION, UPSTREAM_HOST, UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, UPSTREAM_LOCAL_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, DOWNSTREAM_DIRECT_REMOTE_ADDRESS, REQUESTED_SERVER_NAME, ROUTE_NAME, DOWNSTREAM_PEER_URI_SAN, UPSTREAM_PEER_URI_SAN, TRACE_ID, HOSTNAME, FILTER_STATE";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    StartTime,
    /// `%REQ(A?B)%`: header A, else B (`:method`, `:path`, `:authority` too).
    Req(String, Option<String>),
    Resp(String, Option<String>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamClusterRaw,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
    DownstreamPeerUriSan,
    UpstreamPeerUriSan,
    TraceId,
    Hostname,
    FilterState(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Piece {
    Text(String),
    Command {
        command: Command,
        /// `:N` truncation.
        max: Option<usize>,
    },
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Template(pub Vec<Piece>);

/// A rendered value: typed so JSON output keeps numbers and `null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Missing,
    Str(String),
    Num(u64),
}

fn header_pair(arg: &str) -> (String, Option<String>) {
    match arg.split_once('?') {
        Some((a, b)) => (a.to_ascii_lowercase(), Some(b.to_ascii_lowercase())),
        None => (arg.to_ascii_lowercase(), None),
    }
}

fn command(at: usize, name: &str, arg: Option<&str>) -> Result<Command, FormatError> {
    let need_arg = |reason| FormatError::Argument {
        at,
        name: name.to_string(),
        reason,
    };
    let plain = |c: Command| match arg {
        // START_TIME's strftime argument is accepted; the default form is used.
        None => Ok(c),
        Some(_) if name == "START_TIME" => Ok(c),
        Some(_) => Err(need_arg("takes no argument")),
    };
    match name {
        "REQ" | "RESP" => {
            let a = arg
                .filter(|a| !a.is_empty())
                .ok_or_else(|| need_arg("needs a header name, e.g. %REQ(USER-AGENT)%"))?;
            let (h, alt) = header_pair(a);
            Ok(if name == "REQ" {
                Command::Req(h, alt)
            } else {
                Command::Resp(h, alt)
            })
        }
        "FILTER_STATE" => {
            let a = arg
                .filter(|a| !a.is_empty())
                .ok_or_else(|| need_arg("needs a key"))?;
            // `KEY:PLAIN` / `KEY:TYPED`: the serialisation is always plain here.
            let key = a.split(':').next().unwrap_or(a);
            Ok(Command::FilterState(key.to_string()))
        }
        "START_TIME" => plain(Command::StartTime),
        "PROTOCOL" => plain(Command::Protocol),
        "RESPONSE_CODE" => plain(Command::ResponseCode),
        "RESPONSE_FLAGS" => plain(Command::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => plain(Command::ResponseCodeDetails),
        "CONNECTION_TERMINATION_DETAILS" => plain(Command::ConnectionTerminationDetails),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => plain(Command::UpstreamTransportFailureReason),
        "BYTES_RECEIVED" => plain(Command::BytesReceived),
        "BYTES_SENT" => plain(Command::BytesSent),
        "DURATION" => plain(Command::Duration),
        "UPSTREAM_HOST" => plain(Command::UpstreamHost),
        "UPSTREAM_CLUSTER" => plain(Command::UpstreamCluster),
        "UPSTREAM_CLUSTER_RAW" => plain(Command::UpstreamClusterRaw),
        "UPSTREAM_LOCAL_ADDRESS" => plain(Command::UpstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS" => plain(Command::DownstreamLocalAddress),
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            plain(Command::DownstreamRemoteAddress)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            plain(Command::DownstreamRemoteAddressWithoutPort)
        }
        "REQUESTED_SERVER_NAME" => plain(Command::RequestedServerName),
        "ROUTE_NAME" => plain(Command::RouteName),
        "DOWNSTREAM_PEER_URI_SAN" => plain(Command::DownstreamPeerUriSan),
        "UPSTREAM_PEER_URI_SAN" => plain(Command::UpstreamPeerUriSan),
        "TRACE_ID" => plain(Command::TraceId),
        "HOSTNAME" => plain(Command::Hostname),
        _ => Err(FormatError::Unsupported {
            at,
            name: name.to_string(),
        }),
    }
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, FormatError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(i) = rest.find('%') {
            text.push_str(&rest[..i]);
            let at = offset + i;
            let after = &rest[i + 1..];
            let name_len = after
                .bytes()
                .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
                .count();
            let name = &after[..name_len];
            let mut tail = &after[name_len..];
            let mut arg = None;
            if let Some(t) = tail.strip_prefix('(') {
                let close = t.find(')').ok_or(FormatError::Unterminated { at })?;
                arg = Some(&t[..close]);
                tail = &t[close + 1..];
            }
            let mut max = None;
            if let Some(t) = tail.strip_prefix(':') {
                let digits = t.bytes().take_while(u8::is_ascii_digit).count();
                max = t[..digits].parse::<usize>().ok();
                tail = &t[digits..];
            }
            let Some(t) = tail.strip_prefix('%') else {
                return Err(FormatError::Unterminated { at });
            };
            if name.is_empty() {
                return Err(FormatError::Unterminated { at });
            }
            let c = command(at, name, arg)?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Command { command: c, max });
            offset += s[offset..].len() - t.len();
            rest = t;
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    /// Text output: a missing value is `-`.
    pub fn render_text(&self, e: &Entry) -> String {
        let mut out = String::with_capacity(256);
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Command { command, max } => {
                    let v = match value(command, e) {
                        Value::Missing => "-".to_string(),
                        Value::Str(s) => s,
                        Value::Num(n) => n.to_string(),
                    };
                    out.push_str(truncate(&v, *max));
                }
            }
        }
        out
    }

    /// JSON output: a template that is one command keeps the value's type.
    pub fn render_json(&self, e: &Entry) -> serde_json::Value {
        if let [Piece::Command { command, max }] = self.0.as_slice() {
            return match value(command, e) {
                Value::Missing => serde_json::Value::Null,
                Value::Num(n) => serde_json::Value::from(n),
                Value::Str(s) => serde_json::Value::from(truncate(&s, *max)),
            };
        }
        serde_json::Value::from(self.render_text(e))
    }
}

fn truncate(s: &str, max: Option<usize>) -> &str {
    match max {
        Some(m) if s.len() > m => {
            let mut end = m;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        _ => s,
    }
}

fn opt(s: &Option<String>) -> Value {
    match s {
        Some(v) if !v.is_empty() => Value::Str(v.clone()),
        _ => Value::Missing,
    }
}

fn header(h: Option<&http::HeaderMap>, name: &str) -> Option<String> {
    h?.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn req(e: &Entry, name: &str) -> Option<String> {
    match name {
        ":method" => e.method.clone(),
        ":path" => e.path.clone(),
        ":authority" | "host" => e.authority.clone(),
        ":scheme" => e.scheme.clone(),
        _ => header(e.request_headers.as_ref(), name),
    }
}

fn value(c: &Command, e: &Entry) -> Value {
    match c {
        Command::StartTime => Value::Str(rfc3339_millis(e.start)),
        Command::Req(a, b) => opt(&req(e, a).or_else(|| b.as_deref().and_then(|b| req(e, b)))),
        Command::Resp(a, b) => opt(&header(e.response_headers.as_ref(), a).or_else(|| {
            b.as_deref()
                .and_then(|b| header(e.response_headers.as_ref(), b))
        })),
        Command::Protocol => opt(&e.protocol),
        Command::ResponseCode => Value::Num(u64::from(e.response_code)),
        Command::ResponseFlags => Value::Str(if e.response_flags.is_empty() {
            "-".to_string()
        } else {
            e.response_flags.clone()
        }),
        Command::ResponseCodeDetails => opt(&e.response_code_details),
        Command::ConnectionTerminationDetails => opt(&e.connection_termination_details),
        Command::UpstreamTransportFailureReason => opt(&e.upstream_transport_failure_reason),
        Command::BytesReceived => Value::Num(e.bytes_received),
        Command::BytesSent => Value::Num(e.bytes_sent),
        Command::Duration => Value::Num(e.duration_ms),
        Command::UpstreamHost => opt(&e.upstream_host),
        Command::UpstreamCluster | Command::UpstreamClusterRaw => opt(&e.upstream_cluster),
        Command::UpstreamLocalAddress => opt(&e.upstream_local_address),
        Command::DownstreamLocalAddress => opt(&e.downstream_local_address),
        Command::DownstreamRemoteAddress => opt(&e.downstream_remote_address),
        Command::DownstreamRemoteAddressWithoutPort => opt(&e
            .downstream_remote_address
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip().to_string())),
        Command::RequestedServerName => opt(&e.requested_server_name),
        Command::RouteName => opt(&e.route_name),
        Command::DownstreamPeerUriSan => opt(&e.source_principal),
        Command::UpstreamPeerUriSan => opt(&e.destination_principal),
        Command::TraceId => opt(&e.trace_id),
        Command::Hostname => opt(&e.hostname),
        Command::FilterState(k) => match k.strip_prefix("isthmus.") {
            Some("reporter") => opt(&e.reporter),
            Some("source_workload") => opt(&e.source_workload),
            Some("source_namespace") => opt(&e.source_namespace),
            Some("destination_workload") => opt(&e.destination_workload),
            Some("destination_namespace") => opt(&e.destination_namespace),
            Some("destination_service") => opt(&e.destination_service),
            Some("cluster") => opt(&e.cluster),
            _ => Value::Missing,
        },
    }
}

/// Envoy's default `%START_TIME%`: `2024-01-31T12:00:00.123Z` (UTC).
pub fn rfc3339_millis(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn entry() -> Entry {
        let mut h = http::HeaderMap::new();
        h.insert("user-agent", http::HeaderValue::from_static("curl/8.0"));
        h.insert("x-request-id", http::HeaderValue::from_static("rid-1"));
        let mut rh = http::HeaderMap::new();
        rh.insert(
            "x-envoy-upstream-service-time",
            http::HeaderValue::from_static("3"),
        );
        Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_706_702_400_123),
            duration_ms: 5,
            protocol: Some("HTTP/1.1".into()),
            method: Some("GET".into()),
            path: Some("/reviews/1?x=y".into()),
            authority: Some("reviews:9080".into()),
            request_headers: Some(h),
            response_headers: Some(rh),
            response_code: 200,
            response_code_details: Some("via_upstream".into()),
            bytes_received: 0,
            bytes_sent: 17,
            upstream_host: Some("127.0.0.2:15443".into()),
            upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local".into()),
            downstream_local_address: Some("127.0.3.1:9080".into()),
            downstream_remote_address: Some("127.0.2.1:40000".into()),
            route_name: Some("default".into()),
            cluster: Some("us-west".into()),
            ..Entry::default()
        }
    }

    #[test]
    fn istio_default_text_format_renders() {
        let t = Template::parse(DEFAULT_TEXT_FORMAT).expect("the default parses");
        assert_eq!(
            t.render_text(&entry()),
            "[2024-01-31T12:00:00.123Z] \"GET /reviews/1?x=y HTTP/1.1\" 200 - via_upstream - \"-\" 0 17 5 3 \"-\" \"curl/8.0\" \"rid-1\" \"reviews:9080\" \"127.0.0.2:15443\" outbound|9080||reviews.default.svc.cluster.local - 127.0.3.1:9080 127.0.2.1:40000 - default\n"
        );
    }

    #[test]
    fn alternatives_truncation_and_json_types() {
        let mut e = entry();
        e.request_headers.as_mut().expect("headers").insert(
            "x-envoy-original-path",
            http::HeaderValue::from_static("/orig"),
        );
        let t = Template::parse("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %REQ(USER-AGENT):4%")
            .expect("parse");
        assert_eq!(t.render_text(&e), "/orig curl");
        let code = Template::parse("%RESPONSE_CODE%").expect("parse");
        assert_eq!(code.render_json(&e), serde_json::json!(200));
        let sni = Template::parse("%REQUESTED_SERVER_NAME%").expect("parse");
        assert_eq!(sni.render_json(&e), serde_json::Value::Null);
        let mixed = Template::parse("code=%RESPONSE_CODE%").expect("parse");
        assert_eq!(mixed.render_json(&e), serde_json::json!("code=200"));
        let fs = Template::parse("%FILTER_STATE(isthmus.cluster:PLAIN)%").expect("parse");
        assert_eq!(fs.render_json(&e), serde_json::json!("us-west"));
    }

    #[test]
    fn bad_formats_say_where() {
        assert_eq!(
            Template::parse("ok %NOPE% x"),
            Err(FormatError::Unsupported {
                at: 3,
                name: "NOPE".into()
            })
        );
        assert_eq!(
            Template::parse("%REQ(A"),
            Err(FormatError::Unterminated { at: 0 })
        );
        assert!(matches!(
            Template::parse("%REQ%"),
            Err(FormatError::Argument { .. })
        ));
        assert!(matches!(
            Template::parse("50% off"),
            Err(FormatError::Unterminated { at: 2 })
        ));
        assert_eq!(
            Template::parse("plain").expect("text"),
            Template(vec![Piece::Text("plain".into())])
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
