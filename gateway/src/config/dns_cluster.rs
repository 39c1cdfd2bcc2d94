//! STRICT_DNS and LOGICAL_DNS clusters: endpoints named by hostname, which
//! the data plane resolves itself (`crate::resolve`).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::DnsLookupFamily, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use serde::Serialize;

use super::common::duration;
use super::endpoint::LocalityName;
use super::{ConfigError, Ctx};

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsKind {
    /// Every resolved address is a host (`STRICT_DNS`).
    Strict,
    /// One host per hostname, its first address; the rest are only
    /// fallbacks when connecting (`LOGICAL_DNS`).
    Logical,
}

/// `Cluster.dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupFamily {
    /// IPv6 if the name has any AAAA record, else IPv4 (Envoy's AUTO).
    Auto,
    V4Only,
    V6Only,
    /// IPv4 if the name has any A record, else IPv6.
    V4Preferred,
    /// Both families; connections race them (happy eyeballs, RFC 8305).
    All,
}

/// One endpoint of a DNS cluster, before resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsHost {
    pub hostname: String,
    pub port: u16,
    pub weight: u32,
    pub locality: LocalityName,
    pub priority: u32,
    pub locality_weight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsDiscovery {
    pub kind: DnsKind,
    pub hosts: Vec<DnsHost>,
    pub family: LookupFamily,
    /// Re-resolution period when TTLs are not respected (or as the upper
    /// bound when they are and the answer carried none).
    pub refresh_rate: Duration,
    /// Re-resolve when the answer's TTL runs out instead of every
    /// `refresh_rate`.
    pub respect_ttl: bool,
}

/// Parses the DNS part of a STRICT_DNS or LOGICAL_DNS cluster.
// Envoy deprecated the DNS fields of `Cluster` in favour of the
// `envoy.clusters.dns` extension, but Istio control planes still send them.
#[allow(deprecated)]
pub(crate) fn dns_discovery(
    ctx: &Ctx,
    c: &Cluster,
    kind: DnsKind,
) -> Result<DnsDiscovery, ConfigError> {
    let la = c.load_assignment.as_ref().ok_or_else(|| {
        ctx.err(
            "load_assignment",
            "a STRICT_DNS or LOGICAL_DNS cluster needs load_assignment with hostnames",
        )
    })?;
    if !c.dns_resolvers.is_empty() {
        return Err(ctx.err(
            "dns_resolvers",
            "per-cluster DNS resolvers are not supported; the gateway's resolver (--dns-upstream) is used",
        ));
    }
    if c.typed_dns_resolver_config.is_some() {
        return Err(ctx.err(
            "typed_dns_resolver_config",
            "per-cluster DNS resolvers are not supported; the gateway's resolver (--dns-upstream) is used",
        ));
    }
    let mut hosts = Vec::new();
    for (li, loc) in la.endpoints.iter().enumerate() {
        let lf = format!("load_assignment.endpoints[{li}]");
        let locality_weight = match &loc.load_balancing_weight {
            Some(w) if w.value == 0 => {
                return Err(ctx.err(format!("{lf}.load_balancing_weight"), "must be at least 1"))
            }
            Some(w) => Some(w.value),
            None => None,
        };
        let locality = loc
            .locality
            .as_ref()
            .map(|l| LocalityName {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        for (ei, ep) in loc.lb_endpoints.iter().enumerate() {
            let ef = format!("{lf}.lb_endpoints[{ei}].endpoint.address");
            let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
                return Err(ctx.err(&ef, "endpoint with an address is required"));
            };
            let Some(address::Address::SocketAddress(sa)) =
                e.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(ctx.err(&ef, "a socket address (hostname and port) is required"));
            };
            let hostname = sa.address.trim_end_matches('.').to_string();
            if hostname.is_empty() {
                return Err(ctx.err(format!("{ef}.socket_address.address"), "hostname is empty"));
            }
            if hostname.parse::<std::net::IpAddr>().is_err() && !valid_hostname(&hostname) {
                return Err(ctx.err(
                    format!("{ef}.socket_address.address"),
                    format!("{hostname:?} is neither an IP address nor a DNS name"),
                ));
            }
            let port = match &sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    u16::try_from(*p).ok().filter(|p| *p != 0).ok_or_else(|| {
                        ctx.err(
                            format!("{ef}.socket_address.port_value"),
                            format!("{p} is not a connectable TCP port"),
                        )
                    })?
                }
                _ => return Err(ctx.err(&ef, "port_value is required")),
            };
            let weight = match &ep.load_balancing_weight {
                Some(w) if w.value == 0 => {
                    return Err(ctx.err(
                        format!("{lf}.lb_endpoints[{ei}].load_balancing_weight"),
                        "must be at least 1",
                    ))
                }
                Some(w) => w.value,
                None => 1,
            };
            hosts.push(DnsHost {
                hostname,
                port,
                weight,
                locality: locality.clone(),
                priority: loc.priority,
                locality_weight,
            });
        }
    }
    if hosts.is_empty() {
        return Err(ctx.err("load_assignment.endpoints", "no endpoint to resolve"));
    }
    if kind == DnsKind::Logical && hosts.len() > 1 {
        return Err(ctx.err(
            "load_assignment.endpoints",
            "a LOGICAL_DNS cluster takes exactly one endpoint",
        ));
    }
    let family = match DnsLookupFamily::try_from(c.dns_lookup_family) {
        Ok(DnsLookupFamily::Auto) => LookupFamily::Auto,
        Ok(DnsLookupFamily::V4Only) => LookupFamily::V4Only,
        Ok(DnsLookupFamily::V6Only) => LookupFamily::V6Only,
        Ok(DnsLookupFamily::V4Preferred) => LookupFamily::V4Preferred,
        Ok(DnsLookupFamily::All) => LookupFamily::All,
        Err(_) => {
            return Err(ctx.err(
                "dns_lookup_family",
                format!("unknown lookup family {}", c.dns_lookup_family),
            ))
        }
    };
    let refresh_rate = duration(
        ctx,
        "dns_refresh_rate",
        c.dns_refresh_rate.as_ref(),
        DEFAULT_DNS_REFRESH,
    )?;
    // Envoy requires at least 1 ms; anything below would spin.
    if refresh_rate < Duration::from_millis(1) {
        return Err(ctx.err("dns_refresh_rate", "must be at least 1ms"));
    }
    Ok(DnsDiscovery {
        kind,
        hosts,
        family,
        refresh_rate,
        respect_ttl: c.respect_dns_ttl,
    })
}

/// RFC 1123 host name (letters, digits, hyphens, dots; labels of 1 to 63).
fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::google::protobuf::Duration as PbDuration;

    #[allow(deprecated)] // Istio still sets these fields; so does our control plane.
    fn cluster(kind: DiscoveryType, hosts: &[(&str, u32)]) -> Cluster {
        Cluster {
            name: "outbound|443||api.example.com".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: "outbound|443||api.example.com".into(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: hosts
                        .iter()
                        .map(|(h, p)| LbEndpoint {
                            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                                address: Some(Address {
                                    address: Some(address::Address::SocketAddress(SocketAddress {
                                        address: (*h).into(),
                                        port_specifier: Some(
                                            socket_address::PortSpecifier::PortValue(*p),
                                        ),
                                        ..Default::default()
                                    })),
                                }),
                                ..Default::default()
                            })),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            dns_lookup_family: DnsLookupFamily::All as i32,
            dns_refresh_rate: Some(PbDuration {
                seconds: 2,
                nanos: 0,
            }),
            respect_dns_ttl: true,
            ..Default::default()
        }
    }

    #[test]
    fn strict_dns_cluster_parses_hostnames_and_dns_fields() {
        let c = cluster(
            DiscoveryType::StrictDns,
            &[("api.example.com.", 443), ("10.0.0.1", 443)],
        );
        let cfg = super::super::cluster_from_proto(&c).expect("valid");
        let super::super::Discovery::Dns(d) = &cfg.discovery else {
            panic!("not a DNS cluster: {:?}", cfg.discovery);
        };
        assert_eq!(d.kind, DnsKind::Strict);
        assert_eq!(d.hosts[0].hostname, "api.example.com");
        assert_eq!(d.hosts[0].port, 443);
        assert_eq!(d.family, LookupFamily::All);
        assert_eq!(d.refresh_rate, Duration::from_secs(2));
        assert!(d.respect_ttl);
        assert!(cfg.eds_name().is_none());
    }

    #[test]
    fn logical_dns_takes_one_endpoint_and_bad_input_names_the_field() {
        let c = cluster(
            DiscoveryType::LogicalDns,
            &[("a.example", 80), ("b.example", 80)],
        );
        let e = super::super::cluster_from_proto(&c).expect_err("two endpoints");
        assert!(e.to_string().contains("exactly one endpoint"), "{e}");
        let c = cluster(DiscoveryType::StrictDns, &[("bad host!", 80)]);
        let e = super::super::cluster_from_proto(&c).expect_err("bad name");
        assert!(e.field.contains("lb_endpoints[0]"), "{e}");
        let c = cluster(DiscoveryType::StrictDns, &[("a.example", 0)]);
        let e = super::super::cluster_from_proto(&c).expect_err("port 0");
        assert!(e.to_string().contains("port"), "{e}");
        let mut c = cluster(DiscoveryType::StrictDns, &[("a.example", 80)]);
        c.load_assignment = None;
        let e = super::super::cluster_from_proto(&c).expect_err("no endpoints");
        assert_eq!(e.field, "load_assignment");
    }
}
