//! Readiness of a federation and what its control planes report: the
//! federation leader, the replicated registry, cluster leases.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::admin;
use crate::error::HarnessError;
use crate::federation::Federation;
use crate::load::{self, Landing};
use crate::wait;

/// The federation as one control plane sees it.
#[derive(Debug, Clone)]
pub struct RegistryView {
    pub clusters: Vec<String>,
    /// (cluster, lease expired)
    pub leases: Vec<(String, bool)>,
    /// (cluster, "ns/name", endpoint count)
    pub services: Vec<(String, String, usize)>,
    pub applied_index: u64,
}

impl RegistryView {
    pub fn from_json(v: &Value) -> RegistryView {
        let clusters = v["clusters"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let leases = v["leases"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, l)| {
                        // Rendered with Debug by the control plane, e.g.
                        // "LeaseState { renewed_at: 26, expired: false }".
                        let expired = l
                            .as_str()
                            .map(|s| s.contains("expired: true"))
                            .unwrap_or(false);
                        (k.clone(), expired)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut services = Vec::new();
        if let Some(m) = v["services"].as_object() {
            for (cluster, svcs) in m {
                if let Some(svcs) = svcs.as_object() {
                    for (key, s) in svcs {
                        let n = s["endpoints"].as_array().map(Vec::len).unwrap_or(0);
                        services.push((cluster.clone(), key.clone(), n));
                    }
                }
            }
        }
        RegistryView {
            clusters,
            leases,
            services,
            applied_index: v["appliedIndex"].as_u64().unwrap_or(0),
        }
    }

    pub fn lease_expired(&self, cluster: &str) -> Option<bool> {
        self.leases
            .iter()
            .find(|(c, _)| c == cluster)
            .map(|(_, e)| *e)
    }

    pub fn endpoints(&self, cluster: &str, service: &str) -> usize {
        self.services
            .iter()
            .filter(|(c, s, _)| c == cluster && s == service)
            .map(|(_, _, n)| *n)
            .sum()
    }
}

impl Federation {
    fn control_admin(&self, cluster: &str) -> Result<SocketAddr, HarnessError> {
        Ok(self.cluster(cluster)?.block.control_admin())
    }

    /// The registry as `observer`'s control plane has applied it.
    pub async fn registry(&self, observer: &str) -> Result<RegistryView, String> {
        let addr = self.control_admin(observer).map_err(|e| e.to_string())?;
        let v = admin::get_json(addr, "/debug/registry")
            .await
            .map_err(|e| e.to_string())?;
        Ok(RegistryView::from_json(&v))
    }

    /// `observer`'s view of the Raft group: (its role, the leader id).
    pub async fn raft_status(&self, observer: &str) -> Result<(String, u64), String> {
        let addr = self.control_admin(observer).map_err(|e| e.to_string())?;
        let v = admin::get_json(addr, "/debug/federation")
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            v["role"].as_str().unwrap_or("").to_string(),
            v["leader"].as_u64().unwrap_or(0),
        ))
    }

    /// Control planes ready, one leader agreed by all, every cluster in
    /// every registry with a live lease and its exported services.
    pub async fn wait_federated(
        &self,
        among: &[&str],
        limit: Duration,
    ) -> Result<(), HarnessError> {
        let names: Vec<String> = among.iter().map(|s| s.to_string()).collect();
        let expect: Vec<(String, Vec<String>)> = self
            .clusters()
            .iter()
            .filter(|c| names.contains(&c.spec.name))
            .map(|c| {
                let svcs = c
                    .spec
                    .services
                    .iter()
                    .filter(|s| s.export)
                    .map(|s| format!("{}/{}", s.namespace, s.name))
                    .collect();
                (c.spec.name.clone(), svcs)
            })
            .collect();
        let check = || async {
            let mut leaders = Vec::new();
            for n in &names {
                admin::ready(self.control_admin(n).map_err(|e| e.to_string())?).await?;
                let (_, leader) = self.raft_status(n).await?;
                if leader == 0 {
                    return Err(format!("{n} knows no federation leader"));
                }
                leaders.push(leader);
                let view = self.registry(n).await?;
                for (c, svcs) in &expect {
                    if !view.clusters.contains(c) {
                        return Err(format!("{n}'s registry lacks cluster {c}"));
                    }
                    if view.lease_expired(c) != Some(false) {
                        return Err(format!("{n} sees no live lease for {c}"));
                    }
                    for s in svcs {
                        if view.endpoints(c, s) == 0 {
                            return Err(format!("{n}'s registry has no endpoints of {s} in {c}"));
                        }
                    }
                }
            }
            leaders.dedup();
            if leaders.len() > 1 {
                return Err(format!(
                    "control planes disagree on the leader: {leaders:?}"
                ));
            }
            Ok(())
        };
        wait::until("the federation to form", limit, check)
            .await
            .map_err(|t| self.not_ready(t))
    }

    /// Every gateway and sidecar of `among` reports ready (first complete
    /// configuration applied, certificate issued).
    pub async fn wait_proxies_ready(
        &self,
        among: &[&str],
        limit: Duration,
    ) -> Result<(), HarnessError> {
        let mut admins = Vec::new();
        for c in self
            .clusters()
            .iter()
            .filter(|c| among.contains(&c.spec.name.as_str()))
        {
            for a in c.proxy_admins() {
                admins.push((c.spec.name.clone(), a));
            }
        }
        wait::until("every proxy to be ready", limit, || async {
            for (c, a) in &admins {
                admin::ready(*a).await.map_err(|e| format!("{c}: {e}"))?;
            }
            Ok(())
        })
        .await
        .map_err(|t| self.not_ready(t))
    }

    /// Everything up: [`Federation::wait_federated`] and
    /// [`Federation::wait_proxies_ready`] for every cluster.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), HarnessError> {
        let names: Vec<String> = self
            .clusters()
            .iter()
            .map(|c| c.spec.name.clone())
            .collect();
        let among: Vec<&str> = names.iter().map(String::as_str).collect();
        self.wait_federated(&among, limit).await?;
        self.wait_proxies_ready(&among, limit).await
    }

    /// Until a request from `workload` in `cluster` to `service` lands in
    /// `expect` (the proxies' endpoints and certificates are in place).
    pub async fn wait_lands(
        &self,
        cluster: &str,
        workload: &str,
        service: &str,
        expect: &str,
        limit: Duration,
    ) -> Result<Landing, HarnessError> {
        let cfg = self.load(cluster, workload, service, 1.0)?;
        wait::until(
            &format!("{cluster}/{workload} → {service} to land in {expect}"),
            limit,
            || async {
                match load::request(&cfg).await {
                    Ok(l) if l.cluster == expect => Ok(l),
                    Ok(l) => Err(format!("landed in {}", l.cluster)),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
        .map_err(|t| self.not_ready(t))
    }

    /// Until `observer` marks `cluster`'s lease expired (or live, with `expired = false`).
    pub async fn wait_lease(
        &self,
        observer: &str,
        cluster: &str,
        expired: bool,
        limit: Duration,
    ) -> Result<Duration, HarnessError> {
        let start = tokio::time::Instant::now();
        wait::until(
            &format!("{observer} to see {cluster}'s lease expired={expired}"),
            limit,
            || async {
                let v = self.registry(observer).await?;
                match v.lease_expired(cluster) {
                    Some(e) if e == expired => Ok(()),
                    other => Err(format!("lease expired = {other:?}")),
                }
            },
        )
        .await
        .map_err(|t| self.not_ready(t))?;
        Ok(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_view_reads_the_control_planes_json() {
        let v: Value = serde_json::json!({
            "appliedIndex": 23,
            "clusters": {"us-east": {}, "eu-central": {}},
            "leases": {
                "us-east": "LeaseState { renewed_at: 121, expired: true }",
                "eu-central": "LeaseState { renewed_at: 130, expired: false }"
            },
            "services": {"eu-central": {"default/reviews": {"endpoints": [{}, {}]}}}
        });
        let r = RegistryView::from_json(&v);
        assert_eq!(r.applied_index, 23);
        assert_eq!(
            r.clusters,
            vec!["eu-central".to_string(), "us-east".to_string()]
        );
        assert_eq!(r.lease_expired("us-east"), Some(true));
        assert_eq!(r.lease_expired("eu-central"), Some(false));
        assert_eq!(r.lease_expired("nope"), None);
        assert_eq!(r.endpoints("eu-central", "default/reviews"), 2);
        assert_eq!(r.endpoints("us-east", "default/reviews"), 0);
    }
}
