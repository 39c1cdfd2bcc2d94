//! DNS resolution for STRICT_DNS and LOGICAL_DNS clusters (ServiceEntry
//! `resolution: DNS` / `DNS_ROUND_ROBIN`), with hickory-resolver.
//!
//! [`Resolver`] looks names up with the answers' TTLs; [`DnsClusters`]
//! keeps one task per DNS cluster that re-resolves its hostnames when the
//! TTL runs out (or every `dns_refresh_rate`), keeps the last good
//! addresses of a hostname while its lookups fail, and publishes the
//! resulting load assignments through a `watch` the configuration owner
//! (`crate::apply`) reads. [`happy`] connects to dual-stack hosts per
//! RFC 8305.

mod clusters;
pub mod happy;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

pub use clusters::{serialize_resolved, DnsClusters, ResolvedCluster, ResolvedMap};

use crate::config::LookupFamily;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "cannot read the system resolver configuration (/etc/resolv.conf): {0}; set --dns-upstream"
    )]
    SystemConfig(String),
    #[error("{name}: no {family} address (the name exists but has no such record)")]
    NoAddress { name: String, family: &'static str },
    #[error("{name}: lookup failed: {reason}")]
    Lookup { name: String, reason: String },
}

/// Where the gateway's resolver sends queries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverOptions {
    /// Upstream DNS servers (UDP, then TCP on truncation); empty uses the
    /// system configuration.
    pub upstream: Vec<SocketAddr>,
    /// Per-query timeout.
    pub timeout: Option<Duration>,
}

/// The addresses of one name and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// In the order they should be tried (RFC 8305 interleaving for `All`).
    pub addrs: Vec<IpAddr>,
    /// Smallest TTL of the answers used.
    pub ttl: Duration,
}

/// A shared hickory resolver (it caches by TTL itself).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(opts: &ResolverOptions) -> Result<Self, ResolveError> {
        let mut builder = if opts.upstream.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolveError::SystemConfig(e.to_string()))?
        } else {
            let servers = opts
                .upstream
                .iter()
                .map(|a| {
                    let conn = |mut c: ConnectionConfig| {
                        c.port = a.port();
                        c
                    };
                    NameServerConfig::new(
                        a.ip(),
                        true,
                        vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let o = builder.options_mut();
        if let Some(t) = opts.timeout {
            o.timeout = t;
        }
        // Hostnames come fully qualified from the control plane: no search
        // list expansion (which would multiply queries and could answer
        // with a different name).
        o.ndots = 0;
        let inner = builder
            .build()
            .map_err(|e| ResolveError::SystemConfig(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Resolves `name` in `family`. An IP literal resolves to itself with
    /// an unbounded TTL.
    pub async fn resolve(
        &self,
        name: &str,
        family: LookupFamily,
    ) -> Result<Resolved, ResolveError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Resolved {
                addrs: vec![ip],
                ttl: Duration::MAX,
            });
        }
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        let (v4, v6) = match family {
            LookupFamily::V4Only => (Some(self.lookup(&fqdn, RecordType::A).await?), None),
            LookupFamily::V6Only => (None, Some(self.lookup(&fqdn, RecordType::AAAA).await?)),
            LookupFamily::Auto | LookupFamily::V4Preferred | LookupFamily::All => {
                let (a, aaaa) = tokio::join!(
                    self.lookup(&fqdn, RecordType::A),
                    self.lookup(&fqdn, RecordType::AAAA)
                );
                match (a, aaaa) {
                    (Err(e), Err(_)) => return Err(e),
                    (a, aaaa) => (a.ok(), aaaa.ok()),
                }
            }
        };
        let (v4, v4_ttl) = v4.unwrap_or_default();
        let (v6, v6_ttl) = v6.unwrap_or_default();
        let pick = |ips: Vec<IpAddr>, ttl| (ips, ttl);
        let (addrs, ttl) = match family {
            LookupFamily::V4Only => pick(v4, v4_ttl),
            LookupFamily::V6Only => pick(v6, v6_ttl),
            LookupFamily::Auto if !v6.is_empty() => pick(v6, v6_ttl),
            LookupFamily::Auto => pick(v4, v4_ttl),
            LookupFamily::V4Preferred if !v4.is_empty() => pick(v4, v4_ttl),
            LookupFamily::V4Preferred => pick(v6, v6_ttl),
            LookupFamily::All => {
                let ttl = match (v4.is_empty(), v6.is_empty()) {
                    (false, false) => v4_ttl.min(v6_ttl),
                    (false, true) => v4_ttl,
                    _ => v6_ttl,
                };
                (happy::interleave(&v6, &v4), ttl)
            }
        };
        if addrs.is_empty() {
            return Err(ResolveError::NoAddress {
                name: name.to_string(),
                family: family_name(family),
            });
        }
        Ok(Resolved { addrs, ttl })
    }

    /// One record type; an empty answer (NODATA) is an empty list.
    async fn lookup(
        &self,
        fqdn: &str,
        rt: RecordType,
    ) -> Result<(Vec<IpAddr>, Duration), ResolveError> {
        match self.inner.lookup(fqdn, rt).await {
            Ok(l) => {
                let ips: Vec<IpAddr> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                let ttl = l
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                Ok((ips, ttl))
            }
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
                Ok((Vec::new(), Duration::ZERO))
            }
            Err(e) => Err(ResolveError::Lookup {
                name: fqdn.trim_end_matches('.').to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

fn family_name(f: LookupFamily) -> &'static str {
    match f {
        LookupFamily::V4Only => "IPv4",
        LookupFamily::V6Only => "IPv6",
        _ => "IPv4 or IPv6",
    }
}
