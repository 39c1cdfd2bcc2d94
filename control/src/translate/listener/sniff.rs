//! Protocol sniffing for ports without a declared protocol (Istio: an
//! unnamed port, or one named without a known `proto-` prefix, is sniffed):
//! the `tls_inspector` and `http_inspector` listener filters, an HTTP chain
//! matched by the application protocols the inspectors report, and a TCP
//! chain that takes everything else (including server-first protocols that
//! send nothing before the inspection timeout).

use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::google::protobuf::Duration;

use super::super::proto::any;
use super::tls_inspector;

pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";

/// What the HTTP inspector reports, as Istio matches it.
pub const SNIFFED_HTTP_PROTOCOLS: [&str; 3] = ["http/1.0", "http/1.1", "h2c"];

/// The ALPN a mesh client offers over mTLS for HTTP to a sniffed port
/// (Istio's `istio.alpn` filter), so the server side picks its HTTP chain
/// without seeing the plaintext.
pub const MESH_HTTP_ALPN: [&str; 3] = ["istio-http/1.0", "istio-http/1.1", "istio-h2"];

/// How long the inspectors wait for the first bytes before the connection
/// goes on as TCP (Istio's `protocolDetectionTimeout` was 100 ms by
/// default before it was disabled; a server-first protocol pays this once
/// per connection).
pub const DETECTION_TIMEOUT_MS: i32 = 100;

pub fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: HTTP_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            HttpInspector::default(),
        ))),
        ..Default::default()
    }
}

/// Turns `listener` into a sniffing listener: `http` serves what the HTTP
/// inspector recognises, `tcp` everything else.
pub fn sniffing(mut listener: Listener, mut http: FilterChain, mut tcp: FilterChain) -> Listener {
    let mut m = http.filter_chain_match.take().unwrap_or_default();
    m.application_protocols = SNIFFED_HTTP_PROTOCOLS.map(String::from).to_vec();
    http.filter_chain_match = Some(m);
    // The fallback keeps whatever else it matched on (port), nothing about protocols.
    if let Some(m) = tcp.filter_chain_match.as_mut() {
        m.application_protocols.clear();
    }
    if tcp.filter_chain_match == Some(FilterChainMatch::default()) {
        tcp.filter_chain_match = None;
    }
    listener
        .listener_filters
        .retain(|f| f.name != HTTP_INSPECTOR);
    if !listener
        .listener_filters
        .iter()
        .any(|f| f.name == super::super::proto::TLS_INSPECTOR)
    {
        listener.listener_filters.push(tls_inspector());
    }
    listener.listener_filters.push(http_inspector());
    go_on_as_tcp_after_timeout(&mut listener);
    listener.filter_chains.push(http);
    listener.filter_chains.push(tcp);
    listener
}

/// A client that sends nothing within the detection timeout (a
/// server-first protocol) goes on to the TCP chain, when `listener` runs
/// the HTTP inspector.
pub fn go_on_as_tcp_after_timeout(listener: &mut Listener) {
    if !listener
        .listener_filters
        .iter()
        .any(|f| f.name == HTTP_INSPECTOR)
    {
        return;
    }
    listener.listener_filters_timeout = Some(Duration {
        seconds: 0,
        nanos: DETECTION_TIMEOUT_MS * 1_000_000,
    });
    listener.continue_on_listener_filters_timeout = true;
}

/// Whether a port declared this way is sniffed (Istio: no protocol and a
/// name without a recognised `proto-` prefix).
pub fn is_sniffed(protocol: Option<&str>, name: Option<&str>) -> bool {
    const KNOWN: [&str; 12] = [
        "HTTP",
        "HTTP2",
        "GRPC",
        "GRPC-WEB",
        "HTTPS",
        "TLS",
        "TCP",
        "MONGO",
        "REDIS",
        "MYSQL",
        "UDP",
        "HTTP_PROXY",
    ];
    if protocol.is_some_and(|p| !p.is_empty()) {
        return false;
    }
    let prefix = name
        .map(|n| n.split('-').next().unwrap_or(n).to_ascii_uppercase())
        .unwrap_or_default();
    !KNOWN.contains(&prefix.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_listener_has_both_inspectors_and_a_fallback() {
        let l = sniffing(
            Listener {
                name: "l".into(),
                ..Default::default()
            },
            FilterChain {
                name: "http".into(),
                ..Default::default()
            },
            FilterChain {
                name: "tcp".into(),
                ..Default::default()
            },
        );
        let names: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            vec![super::super::super::proto::TLS_INSPECTOR, HTTP_INSPECTOR]
        );
        assert!(l.continue_on_listener_filters_timeout);
        let http = l.filter_chains[0]
            .filter_chain_match
            .as_ref()
            .expect("match");
        assert_eq!(
            http.application_protocols,
            vec!["http/1.0", "http/1.1", "h2c"]
        );
        assert!(l.filter_chains[1].filter_chain_match.is_none());
    }

    #[test]
    fn which_ports_are_sniffed() {
        assert!(is_sniffed(None, None));
        assert!(is_sniffed(None, Some("web")));
        assert!(is_sniffed(Some(""), Some("")));
        assert!(!is_sniffed(None, Some("http-web")));
        assert!(!is_sniffed(None, Some("tcp")));
        assert!(!is_sniffed(Some("TCP"), None));
    }
}
