//! Retry policies: retries that skip dead and failing hosts and a dead
//! priority, retriable statuses sent to another host, and streaming gRPC
//! requests retried on connect failures.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::route::v3::{retry_policy::RetryHostPredicate, RetryPolicy};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::util::pack_any;

use super::{http_gateway, route_all, u32v};
use crate::support::ads::ScriptedAds;
use crate::support::http::*;
use crate::support::resources::*;

fn retry_all() -> RetryPolicy {
    RetryPolicy {
        retry_on: "5xx,connect-failure,refused-stream,reset".into(),
        num_retries: u32v(3),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    pack_any(TypedExtensionConfig::default()),
                ),
            ),
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_dead_hosts_failing_hosts_and_a_dead_priority() {
    let mut a = HttpBackend::start("a").await;
    let mut b = HttpBackend::start("b").await;
    let c_backend = HttpBackend::start("c").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(
        EDS,
        vec![named(
            "svc",
            cla("svc", &[(0, &[a.addr, b.addr]), (1, &[c_backend.addr])]),
        )],
    );
    let mut action = to_cluster("svc");
    action.retry_policy = Some(retry_all());
    route_all(&ads, action);
    let (_gw, at) = http_gateway(&ads).await;
    let c = client();
    for _ in 0..20 {
        let (status, _, body) = get(&c, at, "svc", "/", &[]).await;
        assert_eq!(status, 200);
        assert!(
            body == "a" || body == "b",
            "priority 0 serves while healthy: {body}"
        );
    }
    a.kill().await;
    for i in 0..30 {
        let (status, _, body) = get(&c, at, "svc", "/", &[]).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "b"),
            "request {i} after a died"
        );
    }
    b.kill().await;
    for i in 0..30 {
        let (status, _, body) = get(&c, at, "svc", "/", &[]).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "c"),
            "request {i} after priority 0 died"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_status_goes_to_another_host() {
    let bad = HttpBackend::failing("bad", 503).await;
    let good = HttpBackend::start("good").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(
        EDS,
        vec![named("svc", cla("svc", &[(0, &[bad.addr, good.addr])]))],
    );
    let mut action = to_cluster("svc");
    action.retry_policy = Some(retry_all());
    route_all(&ads, action);
    let (_gw, at) = http_gateway(&ads).await;
    let c = client();
    for i in 0..40 {
        let (status, _, body) = get(&c, at, "svc", "/", &[]).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "good"),
            "request {i}"
        );
    }
    assert!(
        bad.hits() > 0,
        "some first tries hit the failing host and were retried"
    );
    assert_eq!(good.hits(), 40);
    // When every host fails, retries run out and the last 503 is returned.
    let before = bad.hits() + good.hits();
    let (status, _, _) = get(&c, at, "svc", "/", &[("x-status", "503")]).await;
    assert_eq!(status, 503);
    assert_eq!(
        bad.hits() + good.hits() - before,
        4,
        "1 try + num_retries 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_grpc_requests_retry_connect_failures() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let alive = HttpBackend::start("alive").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("grpc", with_h2(eds_cluster("grpc")))]);
    ads.set(
        EDS,
        vec![named("grpc", cla("grpc", &[(0, &[dead, alive.addr])]))],
    );
    let mut action = to_cluster("grpc");
    action.retry_policy = Some(RetryPolicy {
        retry_on: "connect-failure,unavailable".into(),
        num_retries: u32v(2),
        ..retry_all()
    });
    route_all(&ads, action);
    let (_gw, at) = http_gateway(&ads).await;
    let (mut send, _conn) = h2c_connect(at).await;
    for i in 0..10 {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
        let req = ::http::Request::builder()
            .method("POST")
            .uri("http://grpc.test/svc.S/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .expect("request");
        tx.send(Ok(Frame::data(Bytes::from(format!("call-{i}")))))
            .await
            .expect("send");
        drop(tx);
        let resp = send.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200, "call {i}");
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(collected.to_bytes(), Bytes::from(format!("call-{i}")));
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
    }
    assert_eq!(alive.hits(), 10);
}

/// A cluster `app` whose retry circuit breaker is `thresholds`, behind a
/// route that retries a 5xx twice.
async fn retry_breaker_gateway(
    app: std::net::SocketAddr,
    thresholds: Thresholds,
) -> (ScriptedAds, isthmus_gateway::Gateway, std::net::SocketAddr) {
    let ads = ScriptedAds::start().await;
    let mut cluster = eds_cluster("app");
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });
    ads.set(CDS, vec![named("app", cluster)]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app])]))]);
    let mut action = to_cluster("app");
    action.retry_policy = Some(RetryPolicy {
        retry_on: "5xx".into(),
        num_retries: u32v(2),
        ..Default::default()
    });
    route_all(&ads, action);
    let (gw, at) = http_gateway(&ads).await;
    (ads, gw, at)
}

/// `n` requests at once that the backend answers 503 after `ms`.
async fn failing_burst(at: std::net::SocketAddr, n: usize, ms: u64) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let delay = ms.to_string();
            get(
                &client(),
                at,
                "app",
                "/",
                &[("x-status", "503"), ("x-delay-ms", delay.as_str())],
            )
            .await
            .0
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(
            r.expect("join"),
            503,
            "the backend's answer, retried or not"
        );
    }
}

/// Retries, retries refused by the breaker, and answers logged with flag UO.
async fn retry_counters(gw: &isthmus_gateway::Gateway) -> (f64, f64, f64) {
    let (_, m) = crate::support::admin_get(gw.admin_address(), "/metrics").await;
    let get = |name: &str| {
        crate::support::metric(&m, &format!("{name}{{cluster=\"app\"}}")).unwrap_or(0.0)
    };
    let uo: f64 = m
        .lines()
        .filter(|l| l.starts_with("istio_requests_total") && l.contains("response_flags=\"UO\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (
        get("isthmus_gateway_upstream_rq_retry_total"),
        get("isthmus_gateway_upstream_rq_retry_overflow_total"),
        uo,
    )
}

/// Istio's `maxRetries`: four requests fail at once and want a retry each;
/// one retry may be in flight, so three answers come back unretried (UO).
/// The one retried gets its second retry too: a finished retry frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_bounds_retries_in_flight() {
    let app = HttpBackend::start("app").await;
    let (_ads, gw, at) = retry_breaker_gateway(
        app.addr,
        Thresholds {
            max_retries: u32v(1),
            ..Default::default()
        },
    )
    .await;
    // Each attempt takes 1 s, so the one retry is still running when the
    // other three answers arrive (a few milliseconds after the first).
    failing_burst(at, 4, 1000).await;
    assert_eq!(app.hits(), 6, "4 first tries and 2 retries of one request");
    assert_eq!(retry_counters(&gw).await, (2.0, 3.0, 3.0));
}

/// Envoy's retry budget: retries in flight may be 10% of the requests in
/// flight, at least 1. Alone, four failing requests get one retry in flight
/// (one of them is retried, twice); beside 20 slow requests in flight, they
/// get two (10% of 20 to 25 requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_scales_with_requests_in_flight() {
    let app = HttpBackend::start("app").await;
    let (_ads, gw, at) = retry_breaker_gateway(
        app.addr,
        Thresholds {
            // Ignored: the budget decides.
            max_retries: u32v(0),
            retry_budget: Some(RetryBudget {
                budget_percent: Some(Percent { value: 10.0 }),
                min_retry_concurrency: u32v(1),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    failing_burst(at, 4, 1000).await;
    assert_eq!(app.hits(), 6);
    assert_eq!(retry_counters(&gw).await, (2.0, 3.0, 3.0));

    let mut background = tokio::task::JoinSet::new();
    for _ in 0..20 {
        background.spawn(async move {
            get(&client(), at, "app", "/", &[("x-delay-ms", "4000")])
                .await
                .0
        });
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.hits() < 26 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 20 slow requests never reached the backend"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    failing_burst(at, 4, 1000).await;
    assert_eq!(app.hits(), 26 + 8, "4 first tries, 2 of them retried twice");
    while let Some(r) = background.join_next().await {
        assert_eq!(r.expect("join"), 200);
    }
    assert_eq!(retry_counters(&gw).await, (6.0, 5.0, 5.0));
}

/// A budget percentage outside 0–100 is refused (NACKed) with its path.
#[test]
fn a_retry_budget_over_100_percent_is_refused() {
    let mut cluster = eds_cluster("app");
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            retry_budget: Some(RetryBudget {
                budget_percent: Some(Percent { value: 150.0 }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let err = isthmus_gateway::config::cluster_from_proto(&cluster)
        .expect_err("150% refused")
        .to_string();
    assert!(
        err.contains("retry_budget.budget_percent") && err.contains("150"),
        "{err}"
    );
}
