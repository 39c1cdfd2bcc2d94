//! Filter chain selection, a pure function of the connection's metadata.
//!
//! Envoy's order: destination port, destination IP (`prefix_ranges`,
//! longest prefix first), server name, transport protocol, application
//! protocols. At each step the most specific criterion that
//! matches wins; chains that leave the criterion empty are the fallback.

use std::net::IpAddr;

use crate::config::{ChainMatch, TransportProtocol};

/// What is known about a connection when its chain is chosen.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo<'a> {
    pub destination_port: u16,
    /// The (original) destination address; `None` matches only chains
    /// without `prefix_ranges`.
    pub destination_ip: Option<IpAddr>,
    pub server_name: Option<&'a str>,
    pub transport_protocol: Option<TransportProtocol>,
    pub application_protocols: &'a [String],
}

/// Index of the chain to use, or `None` (then the default chain, if any).
pub fn select<'m>(
    matchers: impl IntoIterator<Item = &'m ChainMatch>,
    conn: &ConnectionInfo<'_>,
) -> Option<usize> {
    let all: Vec<(usize, &ChainMatch)> = matchers.into_iter().enumerate().collect();

    // 1. destination port.
    let exact: Vec<_> = all
        .iter()
        .copied()
        .filter(|(_, m)| m.destination_port == Some(conn.destination_port))
        .collect();
    let stage = if exact.is_empty() {
        all.iter()
            .copied()
            .filter(|(_, m)| m.destination_port.is_none())
            .collect()
    } else {
        exact
    };

    // 2. destination IP: the longest matching prefix, then chains without ranges.
    let stage = narrow_destination_ip(stage, conn.destination_ip);

    // 3. server name: exact, then the longest matching wildcard, then none.
    let stage = narrow_server_name(stage, conn.server_name);

    // 4. transport protocol.
    let specific: Vec<_> = stage
        .iter()
        .copied()
        .filter(|(_, m)| {
            m.transport_protocol.is_some() && m.transport_protocol == conn.transport_protocol
        })
        .collect();
    let stage = if specific.is_empty() {
        stage
            .into_iter()
            .filter(|(_, m)| m.transport_protocol.is_none())
            .collect()
    } else {
        specific
    };

    // 5. application protocols.
    let specific: Vec<_> = stage
        .iter()
        .copied()
        .filter(|(_, m)| {
            !m.application_protocols.is_empty()
                && m.application_protocols
                    .iter()
                    .any(|p| conn.application_protocols.contains(p))
        })
        .collect();
    let stage: Vec<_> = if specific.is_empty() {
        stage
            .into_iter()
            .filter(|(_, m)| m.application_protocols.is_empty())
            .collect()
    } else {
        specific
    };
    stage.first().map(|(i, _)| *i)
}

fn narrow_destination_ip(
    stage: Vec<(usize, &ChainMatch)>,
    ip: Option<IpAddr>,
) -> Vec<(usize, &ChainMatch)> {
    if let Some(ip) = ip {
        let best = stage
            .iter()
            .flat_map(|(_, m)| m.prefix_ranges.iter())
            .filter(|r| r.contains(ip))
            .map(|r| r.prefix_len)
            .max();
        if let Some(len) = best {
            return stage
                .into_iter()
                .filter(|(_, m)| {
                    m.prefix_ranges
                        .iter()
                        .any(|r| r.prefix_len == len && r.contains(ip))
                })
                .collect();
        }
    }
    stage
        .into_iter()
        .filter(|(_, m)| m.prefix_ranges.is_empty())
        .collect()
}

fn narrow_server_name<'m>(
    stage: Vec<(usize, &'m ChainMatch)>,
    sni: Option<&str>,
) -> Vec<(usize, &'m ChainMatch)> {
    if let Some(sni) = sni {
        let exact: Vec<_> = stage
            .iter()
            .copied()
            .filter(|(_, m)| m.server_names.iter().any(|n| n == sni))
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        // Longest wildcard suffix wins.
        let best = stage
            .iter()
            .flat_map(|(_, m)| m.server_names.iter())
            .filter_map(|n| n.strip_prefix('*'))
            .filter(|suffix| sni.ends_with(suffix) && sni.len() > suffix.len())
            .map(str::len)
            .max();
        if let Some(len) = best {
            return stage
                .iter()
                .copied()
                .filter(|(_, m)| {
                    m.server_names
                        .iter()
                        .filter_map(|n| n.strip_prefix('*'))
                        .any(|s| s.len() == len && sni.ends_with(s))
                })
                .collect();
        }
    }
    stage
        .into_iter()
        .filter(|(_, m)| m.server_names.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(port: Option<u16>, names: &[&str], tp: Option<TransportProtocol>) -> ChainMatch {
        ChainMatch {
            destination_port: port,
            prefix_ranges: vec![],
            server_names: names.iter().map(|s| s.to_string()).collect(),
            transport_protocol: tp,
            application_protocols: vec![],
        }
    }

    fn conn<'a>(
        port: u16,
        sni: Option<&'a str>,
        tp: Option<TransportProtocol>,
    ) -> ConnectionInfo<'a> {
        ConnectionInfo {
            destination_port: port,
            destination_ip: None,
            server_name: sni,
            transport_protocol: tp,
            application_protocols: &[],
        }
    }

    #[test]
    fn table() {
        use TransportProtocol::*;
        let chains = vec![
            m(
                None,
                &["outbound_.9080_._.reviews.default.svc.cluster.local"],
                Some(Tls),
            ), // 0
            m(None, &["*.default.svc.cluster.local"], Some(Tls)), // 1
            m(None, &["*.svc.cluster.local"], Some(Tls)),         // 2
            m(None, &[], Some(RawBuffer)),                        // 3
            m(Some(8080), &[], None),                             // 4
            m(None, &[], Some(Tls)),                              // 5
        ];
        // (destination port, SNI, transport) → chosen chain.
        type Case<'a> = (
            u16,
            Option<&'a str>,
            Option<TransportProtocol>,
            Option<usize>,
        );
        let cases: &[Case<'_>] = &[
            (
                15443,
                Some("outbound_.9080_._.reviews.default.svc.cluster.local"),
                Some(Tls),
                Some(0),
            ),
            (
                15443,
                Some("x.default.svc.cluster.local"),
                Some(Tls),
                Some(1),
            ),
            (15443, Some("x.other.svc.cluster.local"), Some(Tls), Some(2)),
            (15443, Some("example.com"), Some(Tls), Some(5)),
            (15443, None, Some(Tls), Some(5)),
            (15443, None, Some(RawBuffer), Some(3)),
            (
                8080,
                Some("x.default.svc.cluster.local"),
                Some(Tls),
                Some(4),
            ),
            (8080, None, Some(RawBuffer), Some(4)),
        ];
        for (port, sni, tp, want) in cases {
            assert_eq!(
                select(&chains, &conn(*port, *sni, *tp)),
                *want,
                "port {port} sni {sni:?} tp {tp:?}"
            );
        }
    }

    #[test]
    fn permissive_tls_and_plaintext_on_one_port() {
        use TransportProtocol::*;
        let chains = vec![m(None, &[], Some(Tls)), m(None, &[], Some(RawBuffer))];
        assert_eq!(select(&chains, &conn(80, None, Some(Tls))), Some(0));
        assert_eq!(select(&chains, &conn(80, None, Some(RawBuffer))), Some(1));
    }

    #[test]
    fn destination_ip_longest_prefix_then_unranged() {
        use crate::config::CidrRange;
        let range = |a: &str, len: u8| CidrRange {
            address: a.parse().expect("ip"),
            prefix_len: len,
        };
        let mut wide = m(Some(80), &[], None);
        wide.prefix_ranges = vec![range("10.0.0.0", 8)];
        let mut narrow = m(Some(80), &[], None);
        narrow.prefix_ranges = vec![range("10.1.2.3", 32)];
        let any = m(Some(80), &[], None);
        let chains = vec![wide, narrow, any];
        let at = |ip: &str| ConnectionInfo {
            destination_port: 80,
            destination_ip: Some(ip.parse().expect("ip")),
            ..ConnectionInfo::default()
        };
        assert_eq!(select(&chains, &at("10.1.2.3")), Some(1));
        assert_eq!(select(&chains, &at("10.9.9.9")), Some(0));
        assert_eq!(select(&chains, &at("192.168.0.1")), Some(2));
        assert_eq!(select(&chains, &conn(80, None, None)), Some(2));
    }

    #[test]
    fn no_match_is_none() {
        let chains = vec![m(None, &["a.example"], Some(TransportProtocol::Tls))];
        assert_eq!(
            select(
                &chains,
                &conn(80, Some("b.example"), Some(TransportProtocol::Tls))
            ),
            None
        );
        assert_eq!(
            select(&chains, &conn(80, None, Some(TransportProtocol::RawBuffer))),
            None
        );
    }
}
