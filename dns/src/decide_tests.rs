use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, RData, RecordType};

use super::*;
use crate::view::{ClusterHealth, HealthView};
use crate::zone::{HostnameSpec, NameServerSpec, Policy, Zone, ZoneSpec};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn zone(policies: &[(&str, Policy)]) -> Zone {
    Zone::build(&ZoneSpec {
        origin: "global.example.com".into(),
        ttl: 30,
        nameservers: vec![
            NameServerSpec {
                name: "ns-east.global.example.com".into(),
                addresses: vec![ip("192.0.2.1")],
            },
            NameServerSpec {
                name: "ns.other.example.net".into(),
                addresses: vec![],
            },
        ],
        admin: "hostmaster.example.com".into(),
        serial: 1,
        hostnames: policies
            .iter()
            .map(|(n, p)| HostnameSpec {
                name: format!("{n}.global.example.com"),
                policy: p.clone(),
                ttl: Some(10),
            })
            .collect(),
        regions: vec![
            ("10.1.0.0/16".into(), "us-east".into()),
            ("10.2.0.0/16".into(), "eu-central".into()),
            ("2001:db8:2::/48".into(), "eu-central".into()),
        ],
    })
    .unwrap()
}

fn cluster(region: &str, alive: bool, ingress: &[&str]) -> ClusterHealth {
    ClusterHealth {
        region: region.into(),
        lease_alive: alive,
        ingress: ingress.iter().map(|s| ip(s)).collect(),
    }
}

/// us-east and eu-central healthy (eu-central also IPv6), us-west healthy.
fn view() -> HealthView {
    HealthView {
        clusters: BTreeMap::from([
            (
                "us-east".into(),
                cluster("us-east", true, &["198.51.100.1"]),
            ),
            (
                "eu-central".into(),
                cluster("eu-central", true, &["198.51.100.2", "2001:db8::2"]),
            ),
            (
                "us-west".into(),
                cluster("us-west", true, &["198.51.100.3"]),
            ),
        ]),
        stale: false,
    }
}

fn name(s: &str) -> LowerName {
    s.parse().unwrap()
}

fn client(s: &str) -> Client {
    Client {
        source: ip("203.0.113.9"),
        subnet: Some(s.parse().unwrap()),
    }
}

fn resolver() -> Client {
    Client {
        source: ip("203.0.113.9"),
        subnet: None,
    }
}

fn addrs(a: &Answer) -> Vec<String> {
    a.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(x) => Some(x.0.to_string()),
            RData::AAAA(x) => Some(x.0.to_string()),
            _ => None,
        })
        .collect()
}

fn ask(z: &Zone, v: &HealthView, host: &str, t: RecordType, c: &Client, seed: u64) -> Answer {
    decide(
        z,
        v,
        &name(&format!("{host}.global.example.com.")),
        t,
        c,
        seed,
    )
}

#[test]
fn failover_takes_the_first_healthy_entry_and_skips_expired_leases_and_unready_ingress() {
    let order = Policy::Failover(vec![
        "us-east".into(),
        "eu-central".into(),
        "us-west".into(),
    ]);
    let z = zone(&[("shop", order)]);
    let mut v = view();
    let a = ask(&z, &v, "shop", RecordType::A, &resolver(), 0);
    assert_eq!(addrs(&a), ["198.51.100.1"]);
    assert_eq!(a.outcome.clusters, ["us-east"]);
    assert_eq!(a.answers[0].ttl, 10);

    // Expired lease: never answered, even with ready ingress addresses.
    v.clusters.get_mut("us-east").unwrap().lease_alive = false;
    let a = ask(&z, &v, "shop", RecordType::A, &resolver(), 0);
    assert_eq!(addrs(&a), ["198.51.100.2"]);

    // No ready ingress: same.
    v.clusters.get_mut("eu-central").unwrap().ingress = vec![ip("2001:db8::2")];
    let a = ask(&z, &v, "shop", RecordType::A, &resolver(), 0);
    assert_eq!(addrs(&a), ["198.51.100.3"]);
    // ...but AAAA still finds eu-central's IPv6 address.
    let a = ask(&z, &v, "shop", RecordType::AAAA, &resolver(), 0);
    assert_eq!(addrs(&a), ["2001:db8::2"]);
}

#[test]
fn failover_entry_may_name_a_region() {
    // A cluster id wins over a region of the same name; here "europe" is
    // only a region.
    let z = zone(&[("shop", Policy::Failover(vec!["europe".into()]))]);
    let mut v = view();
    v.clusters.get_mut("eu-central").unwrap().region = "europe".into();
    v.clusters
        .insert("eu-2".into(), cluster("europe", true, &["198.51.100.9"]));
    let a = ask(&z, &v, "shop", RecordType::A, &resolver(), 0);
    assert_eq!(addrs(&a), ["198.51.100.9", "198.51.100.2"]);
    assert_eq!(a.outcome.clusters, ["eu-2", "eu-central"]);
}

#[test]
fn nothing_healthy_is_nodata_with_soa_not_a_dead_address() {
    let z = zone(&[("shop", Policy::Failover(vec!["us-east".into()]))]);
    let mut v = view();
    v.clusters.get_mut("us-east").unwrap().lease_alive = false;
    let a = ask(&z, &v, "shop", RecordType::A, &resolver(), 0);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty());
    assert_eq!(a.authority[0].record_type(), RecordType::SOA);
    assert!(a.outcome.clusters.is_empty());
}

#[test]
fn round_robin_cycles_over_healthy_clusters() {
    let z = zone(&[("shop", Policy::RoundRobin)]);
    let v = view();
    let got: Vec<Vec<String>> = (0..6)
        .map(|s| addrs(&ask(&z, &v, "shop", RecordType::A, &resolver(), s)))
        .collect();
    // Clusters in id order: eu-central, us-east, us-west.
    assert_eq!(got[0], ["198.51.100.2"]);
    assert_eq!(got[1], ["198.51.100.1"]);
    assert_eq!(got[2], ["198.51.100.3"]);
    assert_eq!(got[3], got[0]);
}

#[test]
fn weighted_is_exact_over_a_cycle_and_renormalises_without_a_dead_cluster() {
    let w = Policy::Weighted(vec![("us-east".into(), 70), ("eu-central".into(), 30)]);
    let z = zone(&[("shop", w)]);
    let mut v = view();
    let mut count: BTreeMap<String, u32> = BTreeMap::new();
    for s in 0..100 {
        let a = ask(&z, &v, "shop", RecordType::A, &resolver(), s);
        *count.entry(a.outcome.clusters[0].clone()).or_default() += 1;
    }
    assert_eq!(count["us-east"], 70);
    assert_eq!(count["eu-central"], 30);
    assert!(!count.contains_key("us-west"), "no weight: never answered");

    v.clusters.get_mut("us-east").unwrap().lease_alive = false;
    for s in 0..10 {
        let a = ask(&z, &v, "shop", RecordType::A, &resolver(), s);
        assert_eq!(a.outcome.clusters, ["eu-central"]);
    }
}

#[test]
fn geo_uses_ecs_then_source_then_fallback() {
    let geo = Policy::Geo {
        fallback: vec!["us-west".into()],
    };
    let z = zone(&[("shop", geo)]);
    let mut v = view();
    let a = ask(&z, &v, "shop", RecordType::A, &client("10.1.7.0/24"), 0);
    assert_eq!(a.outcome.clusters, ["us-east"]);
    assert_eq!(a.outcome.scope, 16);
    let a = ask(&z, &v, "shop", RecordType::A, &client("10.2.7.0/24"), 0);
    assert_eq!(a.outcome.clusters, ["eu-central"]);
    let a = ask(
        &z,
        &v,
        "shop",
        RecordType::AAAA,
        &client("2001:db8:2:1::/56"),
        0,
    );
    assert_eq!(addrs(&a), ["2001:db8::2"]);
    assert_eq!(a.outcome.scope, 48);

    // No ECS: the resolver's own address decides.
    let c = Client {
        source: ip("10.2.0.53"),
        subnet: None,
    };
    let a = ask(&z, &v, "shop", RecordType::A, &c, 0);
    assert_eq!(a.outcome.clusters, ["eu-central"]);
    // ECS with prefix 0 (client opted out): the source again.
    let c = Client {
        source: ip("10.1.0.53"),
        subnet: Some("0.0.0.0/0".parse().unwrap()),
    };
    assert_eq!(
        ask(&z, &v, "shop", RecordType::A, &c, 0).outcome.clusters,
        ["us-east"]
    );

    // Unknown network: fallback list; region down: fallback too.
    let a = ask(&z, &v, "shop", RecordType::A, &client("192.168.1.0/24"), 0);
    assert_eq!(a.outcome.clusters, ["us-west"]);
    assert_eq!(a.outcome.scope, 24);
    v.clusters.get_mut("eu-central").unwrap().lease_alive = false;
    let a = ask(&z, &v, "shop", RecordType::A, &client("10.2.7.0/24"), 0);
    assert_eq!(a.outcome.clusters, ["us-west"]);
    // Fallback down too: any healthy cluster.
    v.clusters.get_mut("us-west").unwrap().lease_alive = false;
    let a = ask(&z, &v, "shop", RecordType::A, &client("10.2.7.0/24"), 0);
    assert_eq!(a.outcome.clusters, ["us-east"]);
}

#[test]
fn zone_structure_answers() {
    let z = zone(&[("shop.eu", Policy::RoundRobin)]);
    let v = view();
    let q = |n: &str, t| decide(&z, &v, &name(n), t, &resolver(), 0);

    let a = q("global.example.com.", RecordType::SOA);
    assert_eq!(a.answers[0].record_type(), RecordType::SOA);
    let a = q("global.example.com.", RecordType::NS);
    assert_eq!(a.answers.len(), 2);
    assert_eq!(a.additionals.len(), 1, "glue for the in-zone server only");
    let a = q("ns-east.global.example.com.", RecordType::A);
    assert_eq!(addrs(&a), ["192.0.2.1"]);
    let a = q("ns-east.global.example.com.", RecordType::AAAA);
    assert!(a.answers.is_empty() && a.rcode == ResponseCode::NoError);

    let a = q("nope.global.example.com.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    assert_eq!(a.authority[0].record_type(), RecordType::SOA);
    // An ancestor of a hostname exists (empty non-terminal).
    let a = q("eu.global.example.com.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty());
    // Names are case-insensitive.
    let a = q("SHOP.EU.Global.Example.COM.", RecordType::A);
    assert_eq!(a.answers.len(), 1);
    // A type the hostname has no data for: NODATA, with the policy known.
    let a = q("shop.eu.global.example.com.", RecordType::MX);
    assert!(a.answers.is_empty() && a.rcode == ResponseCode::NoError);
    assert_eq!(a.outcome.policy, Some("round-robin"));

    let a = q("example.org.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::Refused);
    assert!(a.authority.is_empty());
}

#[test]
fn preview_shows_what_each_region_gets() {
    let geo = Policy::Geo { fallback: vec![] };
    let w = Policy::Weighted(vec![("us-east".into(), 70), ("eu-central".into(), 30)]);
    let z = zone(&[("shop", geo), ("cart", w)]);
    let v = view();
    let p = preview(&z, &v, "shop.global.example.com", Some("eu-central")).unwrap();
    assert_eq!(p.clusters, ["eu-central"]);
    let p = preview(&z, &v, "shop.global.example.com", Some("us-east")).unwrap();
    assert_eq!(p.clusters, ["us-east"]);
    let p = preview(&z, &v, "cart.global.example.com", None).unwrap();
    assert_eq!(p.clusters, ["us-east(70)", "eu-central(30)"]);
    assert!(preview(&z, &v, "other.global.example.com", None).is_none());
}
