//! Global DNS configuration: the `dns` section of the MeshConfig (where and
//! which zone to serve) and the Gateways annotated `isthmus.io/global`
//! (which hostnames, with which policy). Turned into an `isthmus_dns`
//! zone; every problem names the file, line and field.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use isthmus_dns::{HostnameSpec, NameServerSpec, Policy, ZoneSpec, DEFAULT_TTL};
use serde::{Deserialize, Serialize};

use crate::config::{Kind, Resource};
use crate::store::ConfigSnapshot;

/// Marks a Gateway's hosts (those under the zone) as global hostnames.
pub const ANNOTATION_GLOBAL: &str = "isthmus.io/global";
/// `failover` (default), `round-robin`, `weighted` or `geo`.
pub const ANNOTATION_POLICY: &str = "isthmus.io/dns-policy";
/// Comma-separated clusters or regions: the failover order, or geo's fallback.
pub const ANNOTATION_FAILOVER: &str = "isthmus.io/dns-failover";
/// `cluster=percent,...` for `weighted`.
pub const ANNOTATION_WEIGHTS: &str = "isthmus.io/dns-weights";
/// Answer TTL of these hostnames, e.g. `10s`.
pub const ANNOTATION_TTL: &str = "isthmus.io/dns-ttl";

/// `MeshConfig.spec.dns`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSettings {
    /// `ip:port` addresses served over UDP and TCP, e.g. `0.0.0.0:53`.
    pub listen: Vec<String>,
    /// The delegated zone, e.g. `global.example.com`.
    pub zone: String,
    /// Answer TTL (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub ttl: Option<crate::config::Duration>,
    /// SOA mailbox (default `hostmaster.<zone>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Every control plane serving the zone, the same list in every
    /// cluster, so the parent can delegate to all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<DnsNameServer>,
    /// Client networks (ECS or resolver address) to regions, for `geo`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<DnsRegion>,
    /// How this control plane checks its own ingress gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_probe: Option<IngressProbe>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsNameServer {
    pub name: String,
    /// Glue, needed when the name is inside the zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsRegion {
    pub cidr: String,
    pub region: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressProbe {
    /// Default true. Off: every configured ingress address counts as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Default 2s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub interval: Option<crate::config::Duration>,
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<crate::config::Duration>,
}

/// What the DNS task runs with, all checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub listen: Vec<SocketAddr>,
    pub zone: ZoneSpec,
    pub probe: ProbePlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePlan {
    pub enabled: bool,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
}

impl Default for ProbePlan {
    fn default() -> Self {
        ProbePlan {
            enabled: true,
            interval: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(1),
        }
    }
}

/// One configuration problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {field}: {message}")]
pub struct SettingsError {
    pub location: String,
    pub field: String,
    pub message: String,
}

fn err(location: &str, field: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError {
        location: location.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// FNV-1a of the zone as configured: the SOA serial, equal on every control
/// plane that has the same configuration (compare with `dig SOA`).
fn serial(spec: &ZoneSpec) -> u32 {
    let text = format!("{spec:?}");
    let mut h: u32 = 0x811c_9dc5;
    for b in text.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

fn parse_ttl(d: &Option<crate::config::Duration>) -> Option<u32> {
    d.as_ref().map(|d| {
        u32::try_from(d.as_std().as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    })
}

/// `None`: the MeshConfig has no `dns` section (global DNS off).
pub fn plan(config: &ConfigSnapshot) -> Result<Option<Plan>, Vec<SettingsError>> {
    let Some(mesh) = config
        .of_kind(Kind::MeshConfig)
        .find_map(|r| match r.resource.as_ref() {
            Resource::MeshConfig(o) => Some((o, r.location.to_string())),
            _ => None,
        })
    else {
        return Ok(None);
    };
    let (mesh, loc) = mesh;
    let Some(dns) = mesh.spec.dns.as_ref() else {
        return Ok(None);
    };
    let mut errors = Vec::new();
    let mut listen = Vec::new();
    for (i, l) in dns.listen.iter().enumerate() {
        match l.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(e) => errors.push(err(
                &loc,
                format!("spec.dns.listen[{i}]"),
                format!("`{l}` is not an ip:port address ({e})"),
            )),
        }
    }
    if dns.listen.is_empty() {
        errors.push(err(
            &loc,
            "spec.dns.listen",
            "no address to serve the zone on; add e.g. `0.0.0.0:53`",
        ));
    }
    if dns.zone.is_empty() {
        errors.push(err(
            &loc,
            "spec.dns.zone",
            "the delegated zone is empty; e.g. `global.example.com`",
        ));
    }
    let zone = dns.zone.trim_end_matches('.').to_ascii_lowercase();
    let mut nameservers = Vec::new();
    for (i, ns) in dns.nameservers.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in ns.addresses.iter().enumerate() {
            match a.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => errors.push(err(
                    &loc,
                    format!("spec.dns.nameservers[{i}].addresses[{j}]"),
                    format!("`{a}` is not an IP address"),
                )),
            }
        }
        nameservers.push(NameServerSpec {
            name: ns.name.clone(),
            addresses,
        });
    }
    if nameservers.is_empty() {
        // A zone needs an NS set; a lone control plane names itself.
        nameservers.push(NameServerSpec {
            name: format!("ns-{}.{zone}", mesh.spec.cluster_id),
            addresses: listen
                .iter()
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified())
                .collect(),
        });
    }
    let mut probe = ProbePlan::default();
    if let Some(p) = &dns.ingress_probe {
        probe.enabled = p.enabled.unwrap_or(true);
        if let Some(d) = &p.interval {
            probe.interval = d.as_std().max(std::time::Duration::from_millis(100));
        }
        if let Some(d) = &p.timeout {
            probe.timeout = d.as_std().max(std::time::Duration::from_millis(10));
        }
    }
    let hostnames = match hostnames(config, &zone) {
        Ok(h) => h,
        Err(mut e) => {
            errors.append(&mut e);
            Vec::new()
        }
    };
    let mut spec = ZoneSpec {
        origin: zone.clone(),
        ttl: parse_ttl(&dns.ttl).unwrap_or(DEFAULT_TTL),
        nameservers,
        admin: dns
            .admin
            .clone()
            .unwrap_or_else(|| format!("hostmaster.{zone}")),
        serial: 0,
        hostnames,
        regions: dns
            .regions
            .iter()
            .map(|r| (r.cidr.clone(), r.region.clone()))
            .collect(),
    };
    spec.serial = serial(&spec);
    if errors.is_empty() {
        // The zone's own checks (names, policies, CIDRs) with the same location.
        if let Err(e) = isthmus_dns::Zone::build(&spec) {
            errors.push(err(&loc, "spec.dns", e.to_string()));
        }
    }
    if errors.is_empty() {
        Ok(Some(Plan {
            listen,
            zone: spec,
            probe,
        }))
    } else {
        Err(errors)
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Global hostnames of every annotated Gateway.
fn hostnames(config: &ConfigSnapshot, zone: &str) -> Result<Vec<HostnameSpec>, Vec<SettingsError>> {
    let mut out: BTreeMap<String, (HostnameSpec, String)> = BTreeMap::new();
    let mut errors = Vec::new();
    for stored in config.of_kind(Kind::Gateway) {
        let Resource::Gateway(gw) = stored.resource.as_ref() else {
            continue;
        };
        let ann = &gw.metadata.annotations;
        if ann.get(ANNOTATION_GLOBAL).map(|v| v.trim()) != Some("true") {
            continue;
        }
        let loc = format!(
            "{} (Gateway {}/{})",
            stored.location,
            gw.metadata.namespace(),
            gw.metadata.name
        );
        let field = |k: &str| format!("metadata.annotations[{k}]");
        let ttl = match ann.get(ANNOTATION_TTL) {
            None => None,
            Some(t) => match crate::config::Duration::parse(t) {
                Ok(d) => parse_ttl(&Some(d)),
                Err(e) => {
                    errors.push(err(&loc, field(ANNOTATION_TTL), e));
                    None
                }
            },
        };
        let order = ann
            .get(ANNOTATION_FAILOVER)
            .map(|s| split_list(s))
            .unwrap_or_default();
        let policy = match ann
            .get(ANNOTATION_POLICY)
            .map(|s| s.trim())
            .unwrap_or("failover")
        {
            "failover" => {
                if order.is_empty() {
                    errors.push(err(
                        &loc,
                        field(ANNOTATION_FAILOVER),
                        "failover needs the ordered clusters or regions, e.g. `us-east,eu-central`",
                    ));
                    continue;
                }
                Policy::Failover(order)
            }
            "round-robin" => Policy::RoundRobin,
            "geo" => Policy::Geo { fallback: order },
            "weighted" => {
                let mut weights = Vec::new();
                let raw = ann
                    .get(ANNOTATION_WEIGHTS)
                    .map(String::as_str)
                    .unwrap_or("");
                for part in split_list(raw) {
                    let parsed = part.split_once('=').and_then(|(c, w)| {
                        Some((
                            c.trim().to_string(),
                            w.trim().trim_end_matches('%').parse::<u32>().ok()?,
                        ))
                    });
                    match parsed {
                        Some(cw) => weights.push(cw),
                        None => errors.push(err(
                            &loc,
                            field(ANNOTATION_WEIGHTS),
                            format!("`{part}` is not `cluster=percent`"),
                        )),
                    }
                }
                if weights.is_empty() {
                    errors.push(err(
                        &loc,
                        field(ANNOTATION_WEIGHTS),
                        "weighted needs `cluster=percent,...`, e.g. `us-east=70,eu-central=30`",
                    ));
                    continue;
                }
                Policy::Weighted(weights)
            }
            other => {
                errors.push(err(
                    &loc,
                    field(ANNOTATION_POLICY),
                    format!("`{other}` is not one of failover, round-robin, weighted, geo"),
                ));
                continue;
            }
        };
        let mut found = false;
        for (si, server) in gw.spec.servers.iter().enumerate() {
            for (hi, host) in server.hosts.iter().enumerate() {
                // Istio's `namespace/host` form.
                let h = host
                    .rsplit('/')
                    .next()
                    .unwrap_or(host)
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if !(h.ends_with(&format!(".{zone}"))) {
                    continue;
                }
                found = true;
                if h.contains('*') {
                    errors.push(err(
                        &loc,
                        format!("spec.servers[{si}].hosts[{hi}]"),
                        format!("`{host}`: a wildcard cannot be a global hostname; list the names"),
                    ));
                    continue;
                }
                let spec = HostnameSpec {
                    name: h.clone(),
                    policy: policy.clone(),
                    ttl,
                };
                if let Some((_, other)) = out.get(&h) {
                    if *other != loc {
                        errors.push(err(
                            &loc,
                            format!("spec.servers[{si}].hosts[{hi}]"),
                            format!("`{h}` is already a global hostname of {other}"),
                        ));
                    }
                    continue;
                }
                out.insert(h, (spec, loc.clone()));
            }
        }
        if !found {
            errors.push(err(
                &loc,
                "spec.servers[].hosts",
                format!("marked {ANNOTATION_GLOBAL} but no host is under the zone `{zone}`"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(out.into_values().map(|(h, _)| h).collect())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_text;
    use crate::store::ConfigStore;
    use std::path::Path;
    use std::sync::Arc;

    fn snapshot(text: &str) -> Arc<ConfigSnapshot> {
        let store = ConfigStore::new();
        let resources = crate::store::stored_resources(parse_text(Path::new("mesh.yaml"), text));
        store.publish(resources, Vec::new())
    }

    const MESH: &str = r#"apiVersion: isthmus.io/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: istio-system}
spec:
  clusterId: us-east
  dns:
    listen: ["127.0.0.1:5353"]
    zone: Global.Example.com.
    ttl: 10s
    nameservers:
    - {name: ns1.global.example.com, addresses: [127.0.0.1]}
    regions:
    - {cidr: 10.1.0.0/16, region: us-east}
"#;

    fn gateway(annotations: &str, hosts: &str) -> String {
        format!(
            "---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: shop
  namespace: default
  annotations:
{annotations}
spec:
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{hosts}]
"
        )
    }

    #[test]
    fn no_dns_section_means_off() {
        let snap = snapshot("apiVersion: isthmus.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m, namespace: istio-system}\nspec: {clusterId: a}\n");
        assert_eq!(plan(&snap), Ok(None));
    }

    #[test]
    fn annotated_gateway_hosts_under_the_zone_become_global_hostnames() {
        let g = gateway(
            "    isthmus.io/global: \"true\"\n    isthmus.io/dns-policy: weighted\n    isthmus.io/dns-weights: \"us-east=70, eu-central=30%\"\n    isthmus.io/dns-ttl: 5s",
            "\"default/shop.global.example.com\", other.example.org",
        );
        let p = plan(&snapshot(&format!("{MESH}{g}"))).unwrap().unwrap();
        assert_eq!(
            p.listen,
            vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(p.zone.origin, "global.example.com");
        assert_eq!(p.zone.ttl, 10);
        assert_eq!(p.zone.hostnames.len(), 1);
        let h = &p.zone.hostnames[0];
        assert_eq!(h.name, "shop.global.example.com");
        assert_eq!(h.ttl, Some(5));
        assert_eq!(
            h.policy,
            Policy::Weighted(vec![("us-east".into(), 70), ("eu-central".into(), 30)])
        );
        // Same config, same serial (every control plane agrees).
        let again = plan(&snapshot(&format!("{MESH}{g}"))).unwrap().unwrap();
        assert_eq!(p.zone.serial, again.zone.serial);
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let g = gateway(
            "    isthmus.io/global: \"true\"\n    isthmus.io/dns-policy: fastest",
            "shop.global.example.com",
        );
        let e = plan(&snapshot(&format!("{MESH}{g}"))).unwrap_err();
        let text = e[0].to_string();
        assert!(text.starts_with("mesh.yaml:"), "{text}");
        assert!(text.contains("Gateway default/shop"), "{text}");
        assert!(
            text.contains("isthmus.io/dns-policy") && text.contains("fastest"),
            "{text}"
        );

        let g = gateway("    isthmus.io/global: \"true\"", "shop.global.example.com");
        let e = plan(&snapshot(&format!("{MESH}{g}"))).unwrap_err();
        assert!(e[0].to_string().contains("failover needs"), "{e:?}");

        let g = gateway(
            "    isthmus.io/global: \"true\"\n    isthmus.io/dns-policy: geo",
            "shop.example.org",
        );
        let e = plan(&snapshot(&format!("{MESH}{g}"))).unwrap_err();
        assert!(
            e[0].to_string().contains("no host is under the zone"),
            "{e:?}"
        );

        let bad = MESH.replace("127.0.0.1:5353", "localhost");
        let e = plan(&snapshot(&bad)).unwrap_err();
        assert!(e[0].to_string().contains("spec.dns.listen[0]"), "{e:?}");

        let bad = MESH.replace("10.1.0.0/16", "10.1.0.0/99");
        let e = plan(&snapshot(&bad)).unwrap_err();
        assert!(e[0].to_string().contains("10.1.0.0/99"), "{e:?}");
    }
}
