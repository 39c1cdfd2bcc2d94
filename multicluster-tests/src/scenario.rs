//! Scenarios shared by the tests and the failover benchmark.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::HarnessError;
use crate::federation::Federation;
use crate::load::{Load, Outcome};
use crate::stats::{around_fault, settled_in, FaultReport, Summary};

/// Calls in a row that must land in the restarted primary for failback to
/// count as done.
const FAILBACK_RUN: usize = 100;

/// Who calls whom in the disaster-recovery scenario.
#[derive(Debug, Clone)]
pub struct DrPlan {
    pub caller: (String, String),
    pub service: String,
    /// Serves the caller while healthy; killed.
    pub primary: String,
    /// Takes over.
    pub backup: String,
    pub rate: f64,
    /// Load before the kill, and after it before the restart.
    pub steady: Duration,
    pub down: Duration,
}

impl DrPlan {
    pub fn bookinfo(rate: f64) -> Self {
        DrPlan {
            caller: ("us-west".into(), "productpage-v1".into()),
            service: "reviews".into(),
            primary: "us-east".into(),
            backup: "eu-central".into(),
            rate,
            steady: Duration::from_secs(3),
            down: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DrReport {
    pub before: Summary,
    pub fault: FaultReport,
    /// From the kill until the caller's control plane marked the primary's lease expired.
    pub lease_expired_after: Duration,
    /// The primary's control plane led the federation when it died: the
    /// survivors elect a leader first, whose lease clock starts afresh.
    pub primary_was_leader: bool,
    /// From the restart until requests settled back in the primary.
    pub failback_after: Option<Duration>,
    /// Everything, start to end.
    pub total: Summary,
    /// Failures that started after the restart.
    pub failed_after_restart: usize,
    /// From the kill until the last answer from the primary (requests in
    /// flight at the kill that still completed there); `None` when none did.
    /// After it, every answer came from elsewhere.
    pub last_primary_answer: Option<Duration>,
}

/// Load → kill the primary cluster → wait for the lease to expire → restart
/// it → wait for failback. The federation must be ready and serving the
/// caller from the primary.
pub async fn disaster_recovery(
    fed: &mut Federation,
    plan: &DrPlan,
) -> Result<DrReport, HarnessError> {
    let (cc, cw) = (plan.caller.0.as_str(), plan.caller.1.as_str());
    let load = Load::start(fed.load(cc, cw, &plan.service, plan.rate)?);
    tokio::time::sleep(plan.steady).await;

    let primary_was_leader =
        matches!(fed.raft_status(&plan.primary).await, Ok((role, _)) if role == "Leader");
    let killed = Instant::now();
    fed.kill_cluster(&plan.primary).await?;
    let lease_expired_after = fed
        .wait_lease(cc, &plan.primary, true, Duration::from_secs(20))
        .await
        .map(|_| killed.elapsed())?;
    let rest = plan.down.saturating_sub(killed.elapsed());
    tokio::time::sleep(rest).await;

    let restarted = Instant::now();
    fed.restart_cluster(&plan.primary).await?;
    fed.wait_lease(cc, &plan.primary, false, Duration::from_secs(30))
        .await?;
    // Failback: requests land in the primary again and stay there. While
    // the restarted cluster's workloads come up one by one, a request
    // reset there is retried in the backup cluster: that is failback in
    // progress, not done, so wait for a run of calls that all land in the
    // primary.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut load = load;
    loop {
        outcomes.extend(load.drain());
        let after: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| o.start >= restarted)
            .cloned()
            .collect();
        let settled = settled_in(&after, &plan.primary)
            .map(|t| after.iter().filter(|o| o.start >= t).count())
            .unwrap_or(0);
        if settled >= FAILBACK_RUN || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    outcomes.extend(load.finish().await);

    let before = Summary::of(outcomes.iter().filter(|o| o.end < killed));
    let fault = around_fault(
        &outcomes
            .iter()
            .filter(|o| o.start < restarted)
            .cloned()
            .collect::<Vec<_>>(),
        killed,
        &plan.backup,
    );
    let after_restart: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.start >= restarted)
        .cloned()
        .collect();
    let failback_after =
        settled_in(&after_restart, &plan.primary).map(|t| t.saturating_duration_since(restarted));
    let last_primary_answer = outcomes
        .iter()
        .filter(|o| o.start < restarted && o.end >= killed)
        .filter(|o| matches!(&o.result, Ok(l) if l.cluster == plan.primary))
        .map(|o| o.end.saturating_duration_since(killed))
        .max();
    Ok(DrReport {
        before,
        fault,
        lease_expired_after,
        primary_was_leader,
        failback_after,
        failed_after_restart: after_restart.iter().filter(|o| !o.ok()).count(),
        last_primary_answer,
        total: Summary::of(&outcomes),
    })
}

/// A VirtualService for `service` with a retry policy that also retries
/// requests in flight when a cluster dies (`reset`); Istio's default
/// retries leave `reset` out, so a crash fails the requests it cuts. With
/// `split` (subset, weight) the route picks a subset per request.
pub fn retry_virtual_service(service: &str, namespace: &str, split: &[(&str, u32)]) -> String {
    let host = format!("{service}.{namespace}.svc.cluster.local");
    let mut route = String::new();
    if split.is_empty() {
        route.push_str(&format!("    - destination:\n        host: {host}\n"));
    }
    for (subset, weight) in split {
        route.push_str(&format!(
            "    - destination:\n        host: {host}\n        subset: {subset}\n      weight: {weight}\n"
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {service}-retries
  namespace: {namespace}
spec:
  hosts:
  - {host}
  http:
  - route:
{route}    retries:
      attempts: 3
      perTryTimeout: 1s
      retryOn: connect-failure,refused-stream,reset,unavailable,gateway-error
"
    )
}

/// `FederationSpec::bookinfo` over HTTP, with [`retry_virtual_service`]
/// for reviews in the caller's cluster, half to v1 and half to v2: the
/// disaster-recovery shape. The split is per request on the caller's
/// sidecar; without subsets the remote east-west gateway (SNI passthrough)
/// picks the workload per connection, and a keep-alive connection stays
/// on one version.
pub fn bookinfo_http_with_retries() -> crate::spec::FederationSpec {
    let mut spec = crate::spec::FederationSpec::bookinfo();
    for c in spec.clusters.iter_mut() {
        for s in c.services.iter_mut() {
            s.protocol = "HTTP".into();
        }
        if c.name == "us-west" {
            c.extra_config.push((
                "retries.yaml".into(),
                retry_virtual_service("reviews", "default", &[("v1", 50), ("v2", 50)]),
            ));
        } else {
            // An exporting cluster's east-west gateway passes through only
            // the SNIs of subsets its own config defines (as in Istio, the
            // DestinationRule goes to every cluster).
            c.extra_config.push((
                "traffic.yaml".into(),
                crate::spec::BOOKINFO_DESTINATION_RULE.into(),
            ));
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_virtual_service_splits_by_subset_when_asked() {
        let plain = retry_virtual_service("reviews", "default", &[]);
        assert!(!plain.contains("subset"), "{plain}");
        assert!(
            plain.contains("retryOn: connect-failure,refused-stream,reset"),
            "{plain}"
        );
        let split = retry_virtual_service("reviews", "default", &[("v1", 90), ("v2", 10)]);
        assert!(
            split.contains("        subset: v1\n      weight: 90\n"),
            "{split}"
        );
        assert!(
            split.contains("        subset: v2\n      weight: 10\n"),
            "{split}"
        );
    }
}
