//! The answer decision: a pure function of the zone, the health view, the
//! client and the query. No sockets, no clocks; the only varying input is
//! `seed`, which the server takes from a per-query counter so round robin
//! and weights are exact over each cycle.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Record, RecordType};
use ipnet::IpNet;

use crate::view::{Family, HealthView};
use crate::zone::{address_record, Hostname, Policy, Zone};

/// Who asks: the packet's source and, when present, the EDNS Client Subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub source: IpAddr,
    pub subnet: Option<IpNet>,
}

impl Client {
    /// The network the answer is for: the client subnet when the resolver
    /// sent one (with a non-zero prefix), else the resolver's own address.
    pub fn network(&self) -> IpNet {
        match self.subnet {
            Some(net) if net.prefix_len() > 0 => net.trunc(),
            _ => IpNet::from(self.source),
        }
    }
}

/// What was decided, besides the records: for metrics and the ECS scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The configured hostname asked for, if any.
    pub hostname: Option<String>,
    pub policy: Option<&'static str>,
    /// Clusters whose addresses are in the answer.
    pub clusters: Vec<String>,
    /// ECS scope prefix: how much of the client's network the answer
    /// depended on (0: the same for everyone).
    pub scope: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
    pub outcome: Outcome,
}

impl Answer {
    fn new(rcode: ResponseCode) -> Answer {
        Answer {
            rcode,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
            outcome: Outcome::default(),
        }
    }

    /// NXDOMAIN or NODATA: the SOA in the authority section tells
    /// resolvers how long to cache the negative answer (RFC 2308).
    fn negative(zone: &Zone, rcode: ResponseCode) -> Answer {
        let mut a = Answer::new(rcode);
        a.authority.push(zone.soa.clone());
        a
    }
}

/// Answers one question.
pub fn decide(
    zone: &Zone,
    view: &HealthView,
    qname: &LowerName,
    qtype: RecordType,
    client: &Client,
    seed: u64,
) -> Answer {
    if !zone.origin.zone_of(qname) {
        // Not authoritative and not a resolver: refuse rather than guess.
        return Answer::new(ResponseCode::Refused);
    }
    if *qname == zone.origin {
        return apex(zone, qtype);
    }
    if let Some(h) = zone.hostnames.get(qname) {
        return hostname(zone, view, h, qtype, client, seed);
    }
    if let Some(glue) = zone.glue.get(qname) {
        let mut a = Answer::new(ResponseCode::NoError);
        a.answers = glue
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .cloned()
            .collect();
        if a.answers.is_empty() {
            return Answer::negative(zone, ResponseCode::NoError);
        }
        return a;
    }
    if zone.interior.contains(qname) {
        return Answer::negative(zone, ResponseCode::NoError);
    }
    Answer::negative(zone, ResponseCode::NXDomain)
}

fn apex(zone: &Zone, qtype: RecordType) -> Answer {
    let mut a = Answer::new(ResponseCode::NoError);
    match qtype {
        RecordType::SOA => a.answers.push(zone.soa.clone()),
        RecordType::NS => {
            a.answers.extend(zone.ns.iter().cloned());
            a.additionals
                .extend(zone.glue.values().flat_map(|g| g.iter().cloned()));
        }
        RecordType::ANY => {
            a.answers.push(zone.soa.clone());
            a.answers.extend(zone.ns.iter().cloned());
        }
        _ => return Answer::negative(zone, ResponseCode::NoError),
    }
    a
}

fn family(qtype: RecordType) -> Option<Family> {
    match qtype {
        RecordType::A => Some(Family::V4),
        RecordType::AAAA => Some(Family::V6),
        RecordType::ANY => Some(Family::Any),
        _ => None,
    }
}

fn hostname(
    zone: &Zone,
    view: &HealthView,
    h: &Hostname,
    qtype: RecordType,
    client: &Client,
    seed: u64,
) -> Answer {
    let mut a = match family(qtype) {
        None => Answer::negative(zone, ResponseCode::NoError),
        Some(fam) => {
            let pick = select(zone, view, &h.policy, fam, client, seed);
            let mut a = Answer::new(ResponseCode::NoError);
            for id in &pick.clusters {
                if let Some(c) = view.clusters.get(id) {
                    for ip in c.ingress.iter().filter(|ip| fam.matches(ip)) {
                        let r = address_record(&h.name, h.ttl, *ip);
                        if !a.answers.contains(&r) {
                            a.answers.push(r);
                        }
                    }
                }
            }
            if a.answers.is_empty() {
                a = Answer::negative(zone, ResponseCode::NoError);
            }
            a.outcome.clusters = pick.clusters;
            a.outcome.scope = pick.scope;
            a
        }
    };
    a.outcome.hostname = Some(h.display.clone());
    a.outcome.policy = Some(h.policy.name());
    a
}

/// The clusters an answer is made of, and the ECS scope it depended on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pick {
    pub clusters: Vec<String>,
    pub scope: u8,
}

/// Healthy clusters of a failover entry: the cluster of that id, or every
/// cluster of that region.
fn entry<'a>(view: &'a HealthView, fam: Family, name: &str) -> Vec<&'a String> {
    if let Some((id, c)) = view.clusters.get_key_value(name) {
        return if c.serves(fam) { vec![id] } else { Vec::new() };
    }
    view.clusters
        .iter()
        .filter(|(_, c)| c.region == name && c.serves(fam))
        .map(|(id, _)| id)
        .collect()
}

fn first_healthy(view: &HealthView, fam: Family, order: &[String]) -> Vec<String> {
    order
        .iter()
        .map(|e| entry(view, fam, e))
        .find(|v| !v.is_empty())
        .map(|v| v.into_iter().cloned().collect())
        .unwrap_or_default()
}

fn select(
    zone: &Zone,
    view: &HealthView,
    policy: &Policy,
    fam: Family,
    client: &Client,
    seed: u64,
) -> Pick {
    let healthy = || {
        view.clusters
            .iter()
            .filter(|(_, c)| c.serves(fam))
            .map(|(id, _)| id.clone())
    };
    match policy {
        Policy::Failover(order) => Pick {
            clusters: first_healthy(view, fam, order),
            scope: 0,
        },
        Policy::RoundRobin => {
            let all: Vec<String> = healthy().collect();
            let clusters = if all.is_empty() {
                Vec::new()
            } else {
                let i = (seed % all.len() as u64) as usize;
                vec![all[i].clone()]
            };
            Pick { clusters, scope: 0 }
        }
        Policy::Weighted(weights) => {
            let live: Vec<(&String, u64)> = weights
                .iter()
                .filter(|(id, w)| *w > 0 && view.clusters.get(id).is_some_and(|c| c.serves(fam)))
                .map(|(id, w)| (id, u64::from(*w)))
                .collect();
            let total: u64 = live.iter().map(|(_, w)| w).sum();
            let mut clusters = Vec::new();
            if total > 0 {
                let mut r = seed % total;
                for (id, w) in live {
                    if r < w {
                        clusters.push(id.clone());
                        break;
                    }
                    r -= w;
                }
            }
            Pick { clusters, scope: 0 }
        }
        Policy::Geo { fallback } => {
            let net = client.network();
            let (region, scope) = match zone.region_of(&net) {
                Some((r, len)) => (Some(r), len),
                // Unmatched: the answer holds for this client network only.
                None => (None, net.prefix_len()),
            };
            let local: Vec<String> = match region {
                Some(r) => view
                    .clusters
                    .iter()
                    .filter(|(_, c)| c.region == r && c.serves(fam))
                    .map(|(id, _)| id.clone())
                    .collect(),
                None => Vec::new(),
            };
            let clusters = if !local.is_empty() {
                local
            } else {
                let f = first_healthy(view, fam, fallback);
                if f.is_empty() {
                    healthy().collect()
                } else {
                    f
                }
            };
            Pick { clusters, scope }
        }
    }
}

/// What a hostname answers right now for a client in `region` (for
/// `isthmus status`): the answer set for failover and geo, the pool one
/// answer is picked from for round robin and weighted.
pub fn preview(
    zone: &Zone,
    view: &HealthView,
    hostname: &str,
    region: Option<&str>,
) -> Option<Pick> {
    let name: LowerName = hostname.parse().ok()?;
    let mut name = hickory_proto::rr::Name::from(name);
    name.set_fqdn(true);
    let h = zone.hostnames.get(&LowerName::new(&name))?;
    let source = region
        .and_then(|r| zone.regions().into_iter().find(|(n, _)| n == r))
        .map(|(_, net)| net)
        .unwrap_or_else(|| IpNet::from(IpAddr::from([0, 0, 0, 0])));
    let client = Client {
        source: source.network(),
        subnet: Some(source),
    };
    let fam = Family::Any;
    Some(match &h.policy {
        Policy::RoundRobin => Pick {
            clusters: view
                .clusters
                .iter()
                .filter(|(_, c)| c.serves(fam))
                .map(|(id, _)| id.clone())
                .collect(),
            scope: 0,
        },
        Policy::Weighted(w) => Pick {
            clusters: w
                .iter()
                .filter(|(id, n)| *n > 0 && view.clusters.get(id).is_some_and(|c| c.serves(fam)))
                .map(|(id, n)| format!("{id}({n})"))
                .collect(),
            scope: 0,
        },
        p => select(zone, view, p, fam, &client, 0),
    })
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
