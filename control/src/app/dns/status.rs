//! What `isthmus status` shows about global DNS: per global hostname, what
//! a client of each configured region is answered right now. Computed with
//! the server's own decision function from the same configuration and
//! registry replica, served at `/debug/dns`.

use std::fmt::Write as _;

use isthmus_dns::{preview, Zone};
use isthmus_federation::RegistrySnapshot;
use serde::{Deserialize, Serialize};

use super::{health_view, settings};
use crate::store::ConfigSnapshot;

/// Region column of clients whose network is not in the region table.
pub const OTHER_CLIENTS: &str = "(other clients)";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsStatusView {
    pub enabled: bool,
    pub zone: String,
    /// SOA serial: equal on control planes with the same DNS configuration.
    pub serial: u32,
    pub listen: Vec<String>,
    /// Answers come from a registry view the majority could not confirm.
    pub stale: bool,
    /// The configuration is rejected (the server keeps the last good zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub hostnames: Vec<HostnameView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostnameView {
    pub hostname: String,
    pub policy: String,
    pub answers: Vec<RegionAnswer>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionAnswer {
    pub region: String,
    /// Clusters answered (for round robin and weighted: the pool one
    /// answer is picked from, weights in parentheses).
    pub clusters: Vec<String>,
    pub addresses: Vec<String>,
}

fn stale_gauge(metrics: &prometheus::Registry) -> bool {
    metrics
        .gather()
        .iter()
        .filter(|mf| mf.name() == "isthmus_dns_view_stale")
        .flat_map(|mf| mf.get_metric().iter())
        .any(|m| m.get_gauge().get_value() > 0.0)
}

pub fn view(
    config: &ConfigSnapshot,
    registry: &RegistrySnapshot,
    metrics: &prometheus::Registry,
) -> DnsStatusView {
    let plan = match settings::plan(config) {
        Ok(Some(p)) => p,
        Ok(None) => return DnsStatusView::default(),
        Err(errors) => {
            return DnsStatusView {
                enabled: true,
                error: Some(
                    errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                ..Default::default()
            }
        }
    };
    let zone = match Zone::build(&plan.zone) {
        Ok(z) => z,
        Err(e) => {
            return DnsStatusView {
                enabled: true,
                error: Some(e.to_string()),
                ..Default::default()
            }
        }
    };
    let stale = stale_gauge(metrics);
    let health = health_view(registry, stale);
    let mut regions: Vec<Option<String>> =
        zone.regions().into_iter().map(|(r, _)| Some(r)).collect();
    regions.push(None);
    let hostnames = zone
        .hostnames()
        .into_iter()
        .map(|(hostname, policy)| {
            let answers = regions
                .iter()
                .map(|region| {
                    let pick =
                        preview(&zone, &health, &hostname, region.as_deref()).unwrap_or_default();
                    let addresses = pick
                        .clusters
                        .iter()
                        .filter_map(|c| health.clusters.get(c.split('(').next().unwrap_or(c)))
                        .flat_map(|c| c.ingress.iter().map(|ip| ip.to_string()))
                        .collect();
                    RegionAnswer {
                        region: region.clone().unwrap_or_else(|| OTHER_CLIENTS.to_string()),
                        clusters: pick.clusters,
                        addresses,
                    }
                })
                .collect();
            HostnameView {
                hostname,
                policy: policy.to_string(),
                answers,
            }
        })
        .collect();
    DnsStatusView {
        enabled: true,
        zone: plan.zone.origin.clone(),
        serial: plan.zone.serial,
        listen: plan.listen.iter().map(|a| a.to_string()).collect(),
        stale,
        error: None,
        hostnames,
    }
}

/// The text section `isthmus status` prints.
pub fn render(v: &DnsStatusView) -> String {
    let mut s = String::new();
    if !v.enabled {
        return s;
    }
    let _ = writeln!(s, "\nGLOBAL DNS");
    if let Some(e) = &v.error {
        let _ = writeln!(
            s,
            "  configuration rejected (serving the last good zone): {e}"
        );
        return s;
    }
    let _ = writeln!(
        s,
        "  zone {} serial {} on {}{}",
        v.zone,
        v.serial,
        v.listen.join(", "),
        if v.stale {
            "  [STALE: registry majority unreachable, answering from the last view]"
        } else {
            ""
        }
    );
    if v.hostnames.is_empty() {
        let _ = writeln!(
            s,
            "  no global hostnames (annotate a Gateway with isthmus.io/global: \"true\")"
        );
    }
    for h in &v.hostnames {
        let _ = writeln!(s, "  {} ({})", h.hostname, h.policy);
        for a in &h.answers {
            let answer = if a.clusters.is_empty() {
                "no healthy cluster (NODATA)".to_string()
            } else {
                format!("{} -> {}", a.clusters.join(", "), a.addresses.join(", "))
            };
            let _ = writeln!(s, "    {:<20} {answer}", a.region);
        }
    }
    s
}
