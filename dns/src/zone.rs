//! The zone this server is authoritative for: its apex records (SOA, NS and
//! in-zone glue), its global hostnames with their policies, and the table
//! that maps client subnets to regions. Built once per configuration change
//! and shared read-only by every query.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use ipnet::IpNet;

/// Default TTL of answers (seconds): low, so clients follow health changes.
pub const DEFAULT_TTL: u32 = 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ZoneError {
    #[error("{what} `{value}` is not a valid DNS name: {reason}")]
    BadName {
        what: String,
        value: String,
        reason: String,
    },
    #[error("hostname `{host}` is not inside the zone `{zone}`; global hostnames must be names under the delegated zone")]
    OutsideZone { host: String, zone: String },
    #[error("hostname `{0}` is declared twice; each global hostname needs exactly one policy")]
    Duplicate(String),
    #[error("hostname `{host}`: {reason}")]
    Policy { host: String, reason: String },
    #[error("the zone needs at least one name server (NS record) so it can be delegated")]
    NoNameServers,
    #[error("name server `{0}` is inside the zone but has no address: add its glue addresses")]
    NoGlue(String),
    #[error("region table entry `{cidr}`: {reason}")]
    Region { cidr: String, reason: String },
}

/// How one hostname picks the clusters it answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// The first entry with a healthy cluster wins; an entry names a
    /// cluster id or a region (then every healthy cluster of that region).
    Failover(Vec<String>),
    /// One healthy cluster per answer, in turn.
    RoundRobin,
    /// One healthy cluster per answer, in proportion to its weight; clusters
    /// without a weight are never answered.
    Weighted(Vec<(String, u32)>),
    /// Healthy clusters of the client's region (from the region table);
    /// otherwise the fallback list as in `Failover`; otherwise every
    /// healthy cluster.
    Geo { fallback: Vec<String> },
}

impl Policy {
    /// The metric label and the configuration spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Failover(_) => "failover",
            Policy::RoundRobin => "round-robin",
            Policy::Weighted(_) => "weighted",
            Policy::Geo { .. } => "geo",
        }
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Policy::Failover(order) if order.is_empty() => {
                Err("failover needs an ordered list of clusters or regions".into())
            }
            Policy::Weighted(w) if w.is_empty() => {
                Err("weighted needs at least one cluster with a weight".into())
            }
            Policy::Weighted(w) if w.iter().all(|(_, n)| *n == 0) => {
                Err("weighted: every weight is 0, so no cluster could ever be answered".into())
            }
            Policy::Weighted(w)
                if w.iter().map(|(_, n)| u64::from(*n)).sum::<u64>() > 1_000_000 =>
            {
                Err("weighted: weights are percentages; their sum must stay below 1000000".into())
            }
            _ => Ok(()),
        }
    }
}

/// One global hostname as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameSpec {
    /// Fully qualified, e.g. `shop.global.example.com`.
    pub name: String,
    pub policy: Policy,
    /// Answer TTL in seconds; the zone's default when `None`.
    pub ttl: Option<u32>,
}

/// A name server of the zone: one per control plane, so the parent zone can
/// delegate to all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameServerSpec {
    pub name: String,
    /// Glue: required when the name is inside the zone.
    pub addresses: Vec<IpAddr>,
}

/// Everything needed to build a [`Zone`]; plain data so the caller can fill
/// it from any configuration format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSpec {
    pub origin: String,
    pub ttl: u32,
    pub nameservers: Vec<NameServerSpec>,
    /// `hostmaster.example.com` form (first label is the mailbox).
    pub admin: String,
    /// Same on every control plane for the same configuration, so all
    /// name servers of the zone agree.
    pub serial: u32,
    pub hostnames: Vec<HostnameSpec>,
    /// `(CIDR, region)`; the longest prefix containing the client wins.
    pub regions: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Hostname {
    /// As configured, for metrics and status.
    pub display: String,
    pub name: Name,
    pub policy: Policy,
    pub ttl: u32,
}

/// A prepared zone: records built once, lookups by lower-cased name.
#[derive(Debug, Clone)]
pub struct Zone {
    pub(crate) origin: LowerName,
    pub(crate) soa: Record,
    pub(crate) ns: Vec<Record>,
    /// In-zone name servers' own A/AAAA records, by name.
    pub(crate) glue: HashMap<LowerName, Vec<Record>>,
    pub(crate) hostnames: HashMap<LowerName, Hostname>,
    /// Names that exist only as ancestors of other names (empty
    /// non-terminals): NODATA, never NXDOMAIN.
    pub(crate) interior: std::collections::HashSet<LowerName>,
    /// Sorted by prefix length, longest first.
    pub(crate) regions: Vec<(IpNet, String)>,
}

fn parse_name(what: &str, value: &str) -> Result<Name, ZoneError> {
    let mut n = Name::from_str(value).map_err(|e| ZoneError::BadName {
        what: what.to_string(),
        value: value.to_string(),
        reason: e.to_string(),
    })?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

impl Zone {
    pub fn build(spec: &ZoneSpec) -> Result<Zone, ZoneError> {
        let origin = parse_name("zone origin", &spec.origin)?;
        if spec.nameservers.is_empty() {
            return Err(ZoneError::NoNameServers);
        }
        let ttl = spec.ttl;
        // Negative answers are cached for the answer TTL at most, so a
        // cluster that comes back is seen as soon as a positive answer would.
        let negative_ttl = ttl;
        let mut ns = Vec::new();
        let mut glue: HashMap<LowerName, Vec<Record>> = HashMap::new();
        for s in &spec.nameservers {
            let name = parse_name("name server", &s.name)?;
            if origin.zone_of(&name) {
                if s.addresses.is_empty() {
                    return Err(ZoneError::NoGlue(s.name.clone()));
                }
                let records = s
                    .addresses
                    .iter()
                    .map(|a| address_record(&name, ttl, *a))
                    .collect();
                glue.insert(LowerName::new(&name), records);
            }
            ns.push(Record::from_rdata(origin.clone(), ttl, RData::NS(NS(name))));
        }
        let mname = match ns.first().map(|r| &r.data) {
            Some(RData::NS(NS(n))) => n.clone(),
            _ => return Err(ZoneError::NoNameServers),
        };
        let rname = parse_name("SOA admin mailbox", &spec.admin)?;
        let soa = Record::from_rdata(
            origin.clone(),
            ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                spec.serial,
                3600,
                600,
                86400,
                negative_ttl,
            )),
        );
        let mut hostnames = HashMap::new();
        let mut interior = std::collections::HashSet::new();
        for h in &spec.hostnames {
            let name = parse_name("global hostname", &h.name)?;
            if !origin.zone_of(&name) || name == origin {
                return Err(ZoneError::OutsideZone {
                    host: h.name.clone(),
                    zone: spec.origin.clone(),
                });
            }
            h.policy.check().map_err(|reason| ZoneError::Policy {
                host: h.name.clone(),
                reason,
            })?;
            let lower = LowerName::new(&name);
            let mut parent = name.base_name();
            while parent.num_labels() > origin.num_labels() {
                interior.insert(LowerName::new(&parent));
                parent = parent.base_name();
            }
            let entry = Hostname {
                display: name.to_string().trim_end_matches('.').to_string(),
                name,
                policy: h.policy.clone(),
                ttl: h.ttl.unwrap_or(ttl),
            };
            if hostnames.insert(lower, entry).is_some() {
                return Err(ZoneError::Duplicate(h.name.clone()));
            }
        }
        let mut regions = Vec::new();
        for (cidr, region) in &spec.regions {
            let net: IpNet =
                cidr.parse()
                    .map_err(|e: ipnet::AddrParseError| ZoneError::Region {
                        cidr: cidr.clone(),
                        reason: format!("not a CIDR ({e}); write e.g. 10.1.0.0/16"),
                    })?;
            if region.is_empty() {
                return Err(ZoneError::Region {
                    cidr: cidr.clone(),
                    reason: "the region is empty".into(),
                });
            }
            regions.push((net.trunc(), region.clone()));
        }
        regions.sort_by_key(|r| std::cmp::Reverse(r.0.prefix_len()));
        Ok(Zone {
            origin: LowerName::new(&origin),
            soa,
            ns,
            glue,
            hostnames,
            interior,
            regions,
        })
    }

    pub fn origin(&self) -> String {
        self.origin.to_string()
    }

    /// Configured hostnames (as written, without the final dot) and their policy names.
    pub fn hostnames(&self) -> Vec<(String, &'static str)> {
        let mut v: Vec<_> = self
            .hostnames
            .values()
            .map(|h| (h.display.clone(), h.policy.name()))
            .collect();
        v.sort();
        v
    }

    /// The region of a client network per the table: the longest prefix
    /// that contains the whole network. With the prefix length matched, for
    /// the ECS scope.
    pub fn region_of(&self, client: &IpNet) -> Option<(&str, u8)> {
        self.regions
            .iter()
            .find(|(net, _)| {
                net.prefix_len() <= client.prefix_len() && net.contains(&client.network())
            })
            .map(|(net, r)| (r.as_str(), net.prefix_len()))
    }

    /// Regions named by the table, sorted, each with one representative
    /// network (for "what is each region answered").
    pub fn regions(&self) -> Vec<(String, IpNet)> {
        let mut out: Vec<(String, IpNet)> = Vec::new();
        for (net, region) in self.regions.iter().rev() {
            if !out.iter().any(|(r, _)| r == region) {
                out.push((region.clone(), *net));
            }
        }
        out.sort();
        out
    }
}

pub(crate) fn address_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> ZoneSpec {
        ZoneSpec {
            origin: "global.example.com".into(),
            ttl: DEFAULT_TTL,
            nameservers: vec![NameServerSpec {
                name: "ns1.global.example.com".into(),
                addresses: vec!["192.0.2.53".parse().unwrap()],
            }],
            admin: "hostmaster.example.com".into(),
            serial: 7,
            hostnames: vec![HostnameSpec {
                name: "Shop.Global.Example.com".into(),
                policy: Policy::RoundRobin,
                ttl: None,
            }],
            regions: vec![
                ("10.0.0.0/8".into(), "us-east".into()),
                ("10.2.0.0/16".into(), "eu-central".into()),
            ],
        }
    }

    #[test]
    fn builds_and_lowercases() {
        let z = Zone::build(&spec()).unwrap();
        assert_eq!(z.origin(), "global.example.com.");
        assert_eq!(
            z.hostnames(),
            vec![("shop.global.example.com".to_string(), "round-robin")]
        );
        assert_eq!(z.ns.len(), 1);
        assert_eq!(z.glue.len(), 1);
    }

    #[test]
    fn longest_prefix_wins_and_wider_client_networks_do_not_match_narrow_entries() {
        let z = Zone::build(&spec()).unwrap();
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(z.region_of(&n("10.2.3.0/24")), Some(("eu-central", 16)));
        assert_eq!(z.region_of(&n("10.3.3.0/24")), Some(("us-east", 8)));
        // A /8 client network is not known to sit inside 10.2/16.
        assert_eq!(z.region_of(&n("10.0.0.0/8")), Some(("us-east", 8)));
        assert_eq!(z.region_of(&n("192.168.0.0/24")), None);
    }

    #[test]
    fn rejects_bad_input_with_what_and_where() {
        let mut s = spec();
        s.hostnames[0].name = "shop.example.org".into();
        assert!(matches!(
            Zone::build(&s),
            Err(ZoneError::OutsideZone { .. })
        ));

        let mut s = spec();
        s.hostnames.push(s.hostnames[0].clone());
        assert!(matches!(Zone::build(&s), Err(ZoneError::Duplicate(_))));

        let mut s = spec();
        s.hostnames[0].policy = Policy::Weighted(vec![("a".into(), 0)]);
        let e = Zone::build(&s).unwrap_err().to_string();
        assert!(e.contains("every weight is 0"), "{e}");

        let mut s = spec();
        s.hostnames[0].policy = Policy::Failover(vec![]);
        assert!(matches!(Zone::build(&s), Err(ZoneError::Policy { .. })));

        let mut s = spec();
        s.nameservers[0].addresses.clear();
        assert!(matches!(Zone::build(&s), Err(ZoneError::NoGlue(_))));

        let mut s = spec();
        s.nameservers.clear();
        assert_eq!(Zone::build(&s).unwrap_err(), ZoneError::NoNameServers);

        let mut s = spec();
        s.regions.push(("10.0.0.0/33".into(), "x".into()));
        let e = Zone::build(&s).unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/33"), "{e}");

        let mut s = spec();
        s.origin = "bad..name".into();
        assert!(matches!(Zone::build(&s), Err(ZoneError::BadName { .. })));
    }
}
