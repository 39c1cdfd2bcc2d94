//! Resilience to failing or overloaded upstreams: injected delays and
//! aborts, circuit-breaker overflow, and 5xx responses feeding outlier
//! detection (with request mirroring on the same route).

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{circuit_breakers::Thresholds, CircuitBreakers};
use envoy_types::pb::envoy::config::route::v3::route_action;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::util::pack_any;

use super::{http_gateway, route_all, route_all_to_app, u32v};
use crate::support::ads::ScriptedAds;
use crate::support::http::*;
use crate::support::resources::*;
use crate::support::*;

fn pct(n: u32) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator: n,
        denominator: DenominatorType::Hundred as i32,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_and_abort() {
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("app", eds_cluster("app"))]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app.addr])]))]);
    let mut delay = prefix_route("delay", "/delay", to_cluster("app"));
    delay.typed_per_filter_config.insert(
        "envoy.filters.http.fault".into(),
        pack_any(HttpFault {
            delay: Some(FaultDelay {
                percentage: pct(100),
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(
                    PbDuration {
                        seconds: 0,
                        nanos: 300_000_000,
                    },
                )),
            }),
            ..Default::default()
        }),
    );
    let mut abort = prefix_route("abort", "/abort", to_cluster("app"));
    abort.typed_per_filter_config.insert(
        "envoy.filters.http.fault".into(),
        pack_any(HttpFault {
            abort: Some(FaultAbort {
                percentage: pct(50),
                error_type: Some(fault_abort::ErrorType::HttpStatus(503)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![delay, abort, prefix_route("rest", "/", to_cluster("app"))],
        )],
    );
    let (gw, at) = http_gateway(&ads).await;
    let c = client();
    let t = Instant::now();
    let (status, _, _) = get(&c, at, "app", "/delay", &[]).await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "delay injected: {:?}",
        t.elapsed()
    );
    let before = app.hits();
    let mut aborted = 0;
    for _ in 0..200 {
        let (status, h, _) = get(&c, at, "app", "/abort", &[]).await;
        if status == 503 {
            aborted += 1;
            assert_eq!(
                h.get("x-envoy-response-flags").map(|v| v.as_bytes()),
                Some(&b"FI"[..])
            );
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!((60..=140).contains(&aborted), "50% abort: {aborted} of 200");
    assert_eq!(
        app.hits() - before,
        200 - aborted,
        "aborted requests never reach the app"
    );
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_requests_total") && l.contains("response_flags=\"FI\"")),
        "FI counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow_is_503_uo() {
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    let mut cluster = eds_cluster("app");
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_requests: u32v(2),
            ..Default::default()
        }],
        ..Default::default()
    });
    route_all_to_app(&ads, cluster, app.addr);
    let (gw, at) = http_gateway(&ads).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        tasks.spawn(async move {
            let c = client();
            get(&c, at, "app", "/hold", &[]).await
        });
    }
    let (mut ok, mut uo) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (status, h, _) = r.expect("join");
        match status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(
                    h.get("x-envoy-response-flags").map(|v| v.as_bytes()),
                    Some(&b"UO"[..])
                );
                uo += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=2).contains(&ok),
        "at most max_requests in flight: {ok} ok"
    );
    assert_eq!(ok + uo, 8);
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert!(m
        .lines()
        .any(|l| l.starts_with("istio_requests_total") && l.contains("response_flags=\"UO\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_5xx_feed_outlier_detection_and_mirrors_get_copies() {
    let bad = HttpBackend::failing("bad", 502).await;
    let good = HttpBackend::start("good").await;
    let shadow = HttpBackend::start("shadow").await;
    let ads = ScriptedAds::start().await;
    let mut svc = eds_cluster("svc");
    svc.outlier_detection = Some(
        envoy_types::pb::envoy::config::cluster::v3::OutlierDetection {
            consecutive_gateway_failure: u32v(2),
            enforcing_consecutive_gateway_failure: u32v(100),
            consecutive_5xx: u32v(1000),
            max_ejection_percent: u32v(50),
            base_ejection_time: Some(PbDuration {
                seconds: 30,
                nanos: 0,
            }),
            ..Default::default()
        },
    );
    ads.set(
        CDS,
        vec![named("svc", svc), named("shadow", eds_cluster("shadow"))],
    );
    ads.set(
        EDS,
        vec![
            named("svc", cla("svc", &[(0, &[bad.addr, good.addr])])),
            named("shadow", cla("shadow", &[(0, &[shadow.addr])])),
        ],
    );
    let mut action = to_cluster("svc");
    action.request_mirror_policies = vec![route_action::RequestMirrorPolicy {
        cluster: "shadow".into(),
        ..Default::default()
    }];
    route_all(&ads, action);
    let (gw, at) = http_gateway(&ads).await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get(&c, at, "svc", "/", &[]).await.0.as_u16());
    }
    let bad_hits = bad.hits();
    assert!(
        bad_hits <= 3,
        "after 2 consecutive gateway errors the host is ejected: {bad_hits} hits"
    );
    assert!(statuses[10..].iter().all(|s| *s == 200), "{statuses:?}");
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "isthmus_gateway_outlier_detection_ejections_total{cluster=\"svc\"}"
        ),
        Some(1.0)
    );
    let deadline = Instant::now() + WAIT;
    while shadow.hits() < 20 {
        assert!(
            Instant::now() < deadline,
            "mirror got {} of 20",
            shadow.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
