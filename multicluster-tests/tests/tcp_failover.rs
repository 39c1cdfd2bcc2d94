//! The disaster-recovery scenario over `protocol: TCP` (tcp_proxy, one
//! connection and one mTLS handshake per request): requests started after
//! the kill all succeed on eu-central; the few in flight at the crash are
//! lost, since only an HTTP retry could save them (see disaster_recovery.rs
//! for the HTTP path with retries and zero failures).

mod common;

use isthmus_multicluster_tests::scenario::{disaster_recovery, DrPlan};
use isthmus_multicluster_tests::FederationSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_services_fail_over_and_back_without_errors_after_the_kill() {
    let mut fed = common::start(FederationSpec::bookinfo(), "us-east")
        .await
        .unwrap();
    let r = disaster_recovery(&mut fed, &DrPlan::bookinfo(common::rate()))
        .await
        .unwrap();
    eprintln!("{r:#?}");
    assert_eq!(r.before.failed, 0, "{:?}", r.before.failures);
    assert!(r.before.share("us-east") >= 0.95, "{:?}", r.before.landings);
    assert_eq!(r.fault.failed_after, 0, "{:?}", r.fault.after.failures);
    assert_eq!(
        r.fault.after.in_cluster("eu-central"),
        r.fault.after.ok,
        "{:?}",
        r.fault.after.landings
    );
    assert!(
        r.fault.failed_in_flight <= 5,
        "{} lost in flight",
        r.fault.failed_in_flight
    );
    assert!(
        r.failback_after.is_some(),
        "traffic never came back to us-east"
    );
    assert_eq!(r.failed_after_restart, 0);
    fed.shutdown().await;
}
