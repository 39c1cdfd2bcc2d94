//! Disaster recovery: us-east, which serves us-west's calls to reviews,
//! dies under load; calls move to eu-central with no failed request, the
//! federation marks us-east's lease expired, and calls come back when it
//! returns.

mod common;

use isthmus_multicluster_tests::scenario::{disaster_recovery, DrPlan};
use isthmus_multicluster_tests::FederationSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_serving_cluster_fails_over_without_errors_and_fails_back() {
    let mut fed = common::start(FederationSpec::bookinfo(), "us-east")
        .await
        .unwrap();
    let plan = DrPlan::bookinfo(common::rate());
    let r = disaster_recovery(&mut fed, &plan).await.unwrap();
    eprintln!("{r:#?}");

    assert!(
        r.before.total as f64 >= plan.rate * 2.0,
        "load too thin: {:?}",
        r.before
    );
    assert_eq!(r.before.failed, 0, "{:?}", r.before);
    assert!(r.before.share("us-east") >= 0.95, "{:?}", r.before.landings);

    // Requests started after the kill: none failed (a refused connect to
    // us-east's gateway goes to the next priority), all were served by eu-central.
    assert_eq!(
        r.fault.failed_after, 0,
        "failures after the kill: {:?}",
        r.fault.after.failures
    );
    assert_eq!(
        r.fault.after.in_cluster("eu-central"),
        r.fault.after.ok,
        "{:?}",
        r.fault.after.landings
    );
    assert!(r.fault.time_to_shift.is_some());
    // A crash resets connections in flight; only an HTTP retry could save
    // those, and the gateway is L4 for now. At most the handful in flight.
    assert!(
        r.fault.failed_in_flight <= 5,
        "{} in-flight requests lost",
        r.fault.failed_in_flight
    );

    // The lease expires within its TTL (3s) plus slack for the renewal
    // period and the check's polling; when the dead cluster led the
    // federation, plus an election (at most 20 ticks of 100ms).
    let election = if r.primary_was_leader { 2.0 } else { 0.0 };
    assert!(
        r.lease_expired_after.as_secs_f64() <= 3.0 + election + 1.5,
        "lease expired after {:?} (primary was leader: {})",
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
