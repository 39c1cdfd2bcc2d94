//! Transparent capture (iptables `REDIRECT` to 15001/15006): the
//! destination a connection had before the redirect, and Envoy's hand-off
//! from a `use_original_dst` listener to the listener that owns that
//! destination.
//!
//! Hand-off order (Envoy's): the listener on exactly `ip:port`, then the
//! one on the wildcard address with that port, else the accepting
//! listener keeps the connection and matches its own filter chains.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::{Health, LocalityName};
use crate::lb::{Host, HostStats};
use crate::state::ListenerRuntime;

/// The destination before the redirect, or `None` when the connection was
/// not redirected (no NAT entry, or the original destination is the
/// listener's own address: handing it on would loop).
pub fn read(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = SockRef::from(stream);
    let raw = match local.ip() {
        IpAddr::V4(_) => sock.original_dst_v4(),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => sock.original_dst_v4(),
        IpAddr::V6(_) => sock.original_dst_v6(),
    };
    match raw {
        Ok(addr) => {
            let dst = addr.as_socket()?;
            (dst != local).then_some(dst)
        }
        Err(e) => {
            // ENOENT: the connection was not NATed (a direct connection).
            tracing::trace!(%local, error = %e, "no original destination");
            None
        }
    }
}

/// The single host of an `ORIGINAL_DST` cluster for one connection.
pub fn host(addr: SocketAddr) -> Host {
    Host {
        addr,
        weight: 1,
        health: Health::Healthy,
        locality: LocalityName::default(),
        priority: 0,
        stats: Arc::new(HostStats::default()),
    }
}

/// A listener that can receive handed-off connections.
#[derive(Debug, Clone)]
pub struct HandoffTarget {
    pub config: watch::Receiver<Arc<ListenerRuntime>>,
    pub draining: watch::Receiver<bool>,
}

/// Every listener by configured address (bound or `bind_to_port: false`).
pub type Handoffs = BTreeMap<SocketAddr, HandoffTarget>;

/// The listener to hand a connection redirected from `original` to, if any
/// other than `own` (the accepting listener's name).
pub fn resolve<'h>(
    handoffs: &'h Handoffs,
    own: &str,
    original: SocketAddr,
) -> Option<&'h HandoffTarget> {
    let wildcard = match original.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    [original, SocketAddr::new(wildcard, original.port())]
        .into_iter()
        .filter_map(|a| handoffs.get(&a))
        .find(|t| t.config.borrow().config.name != own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenerConfig, NetworkFilter, TcpProxyConfig, TcpRoute};
    use std::time::Duration;

    fn target(name: &str, addr: &str) -> (SocketAddr, HandoffTarget) {
        let address: SocketAddr = addr.parse().expect("addr");
        let chain = crate::config::FilterChainConfig {
            name: "c".into(),
            matcher: Default::default(),
            tls: None,
            rbac: vec![],
            filter: NetworkFilter::TcpProxy(TcpProxyConfig {
                stat_prefix: "s".into(),
                route: TcpRoute::Cluster("x".into()),
                idle_timeout: None,
                max_connect_attempts: None,
                access_log: vec![],
            }),
        };
        let rt = ListenerRuntime {
            config: ListenerConfig {
                name: name.into(),
                address,
                tls_inspector: false,
                http_inspector: false,
                listener_filters_timeout: Duration::from_secs(1),
                filter_chains: vec![chain],
                default_chain: None,
                original_dst: false,
                use_original_dst: false,
                bind_to_port: false,
            },
            chains: vec![],
            default_chain: None,
        };
        let (_tx, config) = watch::channel(Arc::new(rt));
        let (_dtx, draining) = watch::channel(false);
        (address, HandoffTarget { config, draining })
    }

    fn pack<T: prost::Name + prost::Message>(m: &T) -> envoy_types::pb::google::protobuf::Any {
        envoy_types::pb::google::protobuf::Any {
            type_url: T::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn tcp_chain() -> envoy_types::pb::envoy::config::listener::v3::FilterChain {
        use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain};
        use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
            tcp_proxy::ClusterSpecifier, TcpProxy,
        };
        let tp = TcpProxy {
            stat_prefix: "p".into(),
            cluster_specifier: Some(ClusterSpecifier::Cluster("PassthroughCluster".into())),
            ..Default::default()
        };
        FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&tp))),
            }],
            ..Default::default()
        }
    }

    fn listener(port: u32) -> envoy_types::pb::envoy::config::listener::v3::Listener {
        use envoy_types::pb::envoy::config::core::v3::{
            address, socket_address::PortSpecifier, Address, SocketAddress,
        };
        envoy_types::pb::envoy::config::listener::v3::Listener {
            name: "l".into(),
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            filter_chains: vec![tcp_chain()],
            ..Default::default()
        }
    }

    #[test]
    fn listener_capture_fields_parse_or_nack_with_the_field() {
        use envoy_types::pb::envoy::config::listener::v3::{listener_filter, ListenerFilter};
        use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
        use envoy_types::pb::google::protobuf::BoolValue;
        let mut l = listener(15001);
        l.use_original_dst = Some(BoolValue { value: true });
        let cfg = crate::config::listener_from_proto(&l).expect("virtualOutbound shape");
        assert!(cfg.use_original_dst && cfg.original_dst && cfg.bind_to_port);

        let mut l = listener(15006);
        l.listener_filters = vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
                &OriginalDst {},
            ))),
            ..Default::default()
        }];
        let cfg = crate::config::listener_from_proto(&l).expect("virtualInbound shape");
        assert!(cfg.original_dst && !cfg.use_original_dst);

        let mut l = listener(9080);
        l.bind_to_port = Some(BoolValue { value: false });
        let cfg = crate::config::listener_from_proto(&l).expect("unbound listener");
        assert!(!cfg.bind_to_port);

        let mut l = listener(15001);
        l.transparent = Some(BoolValue { value: true });
        let e = crate::config::listener_from_proto(&l).expect_err("TPROXY");
        assert!(e.to_string().contains("transparent"), "{e}");
    }

    #[test]
    fn original_dst_cluster_parses_or_nacks() {
        use envoy_types::pb::envoy::config::cluster::v3::{
            cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy},
            Cluster,
        };
        let mut c = Cluster {
            name: "PassthroughCluster".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            )),
            lb_policy: LbPolicy::ClusterProvided as i32,
            ..Default::default()
        };
        let cfg = crate::config::cluster_from_proto(&c).expect("ORIGINAL_DST");
        assert_eq!(cfg.discovery, crate::config::Discovery::OriginalDst);
        c.lb_policy = LbPolicy::RoundRobin as i32;
        let e = crate::config::cluster_from_proto(&c).expect_err("needs CLUSTER_PROVIDED");
        assert!(e.to_string().contains("lb_policy"), "{e}");
    }

    #[test]
    fn exact_address_then_wildcard_then_none() {
        let table: Handoffs = [
            target("10.0.0.5_9080", "10.0.0.5:9080"),
            target("0.0.0.0_9080", "0.0.0.0:9080"),
            target("virtualOutbound", "0.0.0.0:15001"),
        ]
        .into_iter()
        .collect();
        let name = |a: &str| {
            resolve(&table, "virtualOutbound", a.parse().expect("addr"))
                .map(|t| t.config.borrow().config.name.clone())
        };
        assert_eq!(name("10.0.0.5:9080").as_deref(), Some("10.0.0.5_9080"));
        assert_eq!(name("10.0.0.6:9080").as_deref(), Some("0.0.0.0_9080"));
        assert_eq!(name("10.0.0.6:9081"), None);
        // Never back to the accepting listener itself.
        assert_eq!(name("10.0.0.6:15001"), None);
    }
}
