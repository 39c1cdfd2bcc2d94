//! Retries that leave a dead priority: priority 0 is one endpoint that
//! refuses connections, priority 1 is alive. With Istio's default retry
//! policy (`previous_hosts`, as the control plane emits it) or with
//! `previous_priorities` (`retryRemoteLocalities`), every request succeeds;
//! without a retry predicate the retries stay on priority 0 and fail, as in
//! Envoy.

mod support;

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::route::v3::{retry_policy, RetryPolicy};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;

/// Istio's default route retry policy, as `control/src/translate/route/action.rs` emits it.
fn istio_default() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack_any(PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_priorities_only() -> RetryPolicy {
    RetryPolicy {
        retry_host_predicate: Vec::new(),
        retry_priority: Some(retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(
                pack_any(PreviousPrioritiesConfig {
                    update_frequency: 1,
                }),
            )),
        }),
        ..istio_default()
    }
}

fn no_predicate() -> RetryPolicy {
    RetryPolicy {
        retry_host_predicate: Vec::new(),
        ..istio_default()
    }
}

/// An address nothing listens on (bound, then released).
async fn refused_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

/// Replaces the route's retry policy and waits for the gateway's ACK.
async fn set_policy(ads: &ScriptedAds, policy: RetryPolicy) {
    let mut action = to_cluster("svc");
    action.retry_policy = Some(policy);
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![prefix_route("all", "/", action)],
        )],
    );
    assert!(ads.wait_ack(RDS, WAIT).await, "route update ACKed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_leave_a_priority_whose_only_host_refuses() {
    let dead = refused_addr().await;
    let alive = HttpBackend::start("p1").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(
        EDS,
        vec![named(
            "svc",
            cla("svc", &[(0, &[dead]), (1, &[alive.addr])]),
        )],
    );
    let mut action = to_cluster("svc");
    action.retry_policy = Some(istio_default());
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![prefix_route("all", "/", action)],
        )],
    );
    ads.set(
        LDS,
        vec![named("http", http_listener("http", any_port(), rds("80")))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await, "gateway never became ready");
    let at = gw.listener_address("http").expect("bound");
    let c = client();

    // Without a retry predicate, every retry draws priority 0 again.
    set_policy(&ads, no_predicate()).await;
    for i in 0..10 {
        let (status, headers, _) = get(&c, at, "svc", "/", &[]).await;
        assert_eq!(status.as_u16(), 503, "request {i} without a predicate");
        let flags = headers
            .get("x-envoy-response-flags")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(flags.contains("UF"), "connect failure: {flags}");
    }

    for (name, policy) in [
        ("previous_hosts (Istio default)", istio_default()),
        ("previous_priorities", previous_priorities_only()),
    ] {
        set_policy(&ads, policy).await;
        let before = alive.hits();
        for i in 0..100 {
            let (status, _, body) = get(&c, at, "svc", "/", &[]).await;
            assert_eq!(
                (status.as_u16(), body.as_str()),
                (200, "p1"),
                "{name}: request {i}"
            );
        }
        assert_eq!(alive.hits() - before, 100, "{name}");
    }
    drop(gw);
}
