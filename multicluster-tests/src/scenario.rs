//! Scenarios shared by the tests and the failover benchmark.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::HarnessError;
use crate::federation::Federation;
use crate::load::{Load, Outcome};
use crate::stats::{around_fault, settled_in, FaultReport, Summary};

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
    // Failback: requests land in the primary again.
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
        let back = after
            .iter()
            .filter(|o| matches!(&o.result, Ok(l) if l.cluster == plan.primary))
            .count();
        if back >= 20 || Instant::now() >= deadline {
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
    Ok(DrReport {
        before,
        fault,
        lease_expired_after,
        primary_was_leader,
        failback_after,
        failed_after_restart: after_restart.iter().filter(|o| !o.ok()).count(),
        total: Summary::of(&outcomes),
    })
}
