//! Small constructors for the protobuf building blocks every resource kind
//! uses, so the translation modules read as Envoy config rather than plumbing.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ApiVersion,
    ConfigSource, SocketAddress, TransportSocket,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::{Message, Name};

pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub const ROUTER: &str = "envoy.filters.http.router";
pub const FAULT: &str = "envoy.filters.http.fault";
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub fn any<T: Message + Name>(msg: T) -> Any {
    envoy_types::util::pack_any(msg)
}

pub fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn secs(s: u64) -> Duration {
    duration(StdDuration::from_secs(s))
}

pub fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// Every dynamic resource comes over the same ADS stream.
pub fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub fn socket_address(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub fn tls_transport_socket(config: Any) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

/// Splits `host:port`; IPv6 hosts may be bracketed.
pub fn split_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_splitting() {
        assert_eq!(
            split_host_port("10.0.0.1:15443"),
            Some(("10.0.0.1".into(), 15443))
        );
        assert_eq!(split_host_port("[::1]:15443"), Some(("::1".into(), 15443)));
        assert_eq!(
            split_host_port("gw.example.com:443"),
            Some(("gw.example.com".into(), 443))
        );
        assert_eq!(split_host_port("10.0.0.1"), None);
        assert_eq!(split_host_port(":80"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }

    #[test]
    fn durations_convert() {
        let d = duration(StdDuration::from_millis(1500));
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
    }
}
