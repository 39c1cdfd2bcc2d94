//! Disaster recovery at the 200 req/s: us-east, which serves
//! us-west's calls to reviews, dies (kill -9 of every process) under load.
//! The services speak HTTP and us-west's VirtualService retries on connect
//! failure and reset, so even the requests in flight at the crash are
//! answered: zero failed client requests. Traffic is on eu-central (the
//! next priority) within a second, us-west's control plane marks us-east's
//! lease expired within its configured expiry, and traffic comes back when
//! us-east returns.

mod common;

use std::time::Duration;

use isthmus_multicluster_tests::scenario::{bookinfo_http_with_retries, disaster_recovery, DrPlan};

/// Rate of the disaster-recovery load: the 200 req/s unless
/// ISTHMUS_DR_RATE says otherwise.
fn dr_rate() -> f64 {
    std::env::var("ISTHMUS_DR_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_serving_cluster_at_200_rps_fails_no_request_and_fails_back() {
    let spec = bookinfo_http_with_retries();
    let timing = spec.timing.clone();
    let mut fed = common::start(spec, "us-east").await.unwrap();
    let plan = DrPlan::bookinfo(dr_rate());
    let r = disaster_recovery(&mut fed, &plan).await.unwrap();
    eprintln!("{r:#?}");

    assert!(
        r.before.total as f64 >= plan.rate * 2.0,
        "load too thin: {:?}",
        r.before
    );
    assert_eq!(r.before.failed, 0, "{:?}", r.before.failures);
    assert!(r.before.share("us-east") >= 0.95, "{:?}", r.before.landings);
    // The VirtualService's 50/50 split between v1 and v2 holds per request
    // (with subsets the caller's sidecar picks the version; see
    // `bookinfo_http_with_retries`).
    for v in ["v1", "v2"] {
        let n = r
            .before
            .landings
            .iter()
            .filter(|(l, _)| l.version == v)
            .map(|(_, n)| n)
            .sum::<usize>();
        let share = n as f64 / r.before.ok.max(1) as f64;
        assert!(
            (share - 0.5).abs() <= 0.1,
            "{v} got {share:.2}: {:?}",
            r.before.landings
        );
    }

    // Zero failed client requests: none started after the kill, and none of
    // those in flight at it (the retry policy re-sends them elsewhere).
    assert_eq!(
        r.fault.failed_after, 0,
        "failures after the kill: {:?}",
        r.fault.after.failures
    );
    assert_eq!(
        r.fault.failed_in_flight, 0,
        "requests in flight at the kill failed despite retries"
    );
    assert_eq!(r.total.failed, 0, "{:?}", r.total.failures);

    // All traffic on the next priority within 1 s: the first answer from
    // eu-central came within it, no answer from us-east after it, and every
    // request started after the kill landed in eu-central.
    let shift = r.fault.time_to_shift.expect("nothing reached eu-central");
    assert!(
        shift <= Duration::from_secs(1),
        "first eu-central answer after {shift:?}"
    );
    if let Some(last) = r.last_primary_answer {
        assert!(
            last <= Duration::from_secs(1),
            "us-east answered {last:?} after the kill"
        );
    }
    assert_eq!(
        r.fault.after.in_cluster("eu-central"),
        r.fault.after.ok,
        "{:?}",
        r.fault.after.landings
    );

    // Lease expiry (docs/federation.md, "Leases"): the leader proposes
    // ExpireLease when no renewal committed for the TTL, so after a kill
    // within the TTL (the last renewal is up to one renew period older than
    // the kill). When us-east led the federation, the survivors first elect
    // a leader (one election timeout, randomized in [10, 20) ticks), and a
    // new leader cannot know when the old one last heard from a cluster, so
    // it gives every lease a fresh TTL plus the grace (1 s) from its
    // election. Slack: the leader's tick, the commit, and this test's polling.
    let slack = Duration::from_millis(700);
    let bound = if r.primary_was_leader {
        timing.raft_tick * 20 + timing.lease_ttl + Duration::from_secs(1) + slack
    } else {
        timing.lease_ttl + slack
    };
    assert!(
        r.lease_expired_after <= bound,
        "lease expired after {:?}, bound {bound:?} (us-east led: {})",
        r.lease_expired_after,
        r.primary_was_leader
    );

    // Failback, without failures.
    assert!(
        r.failback_after.is_some(),
        "traffic never came back to us-east"
    );
    assert_eq!(r.failed_after_restart, 0);
    fed.shutdown().await;
}
