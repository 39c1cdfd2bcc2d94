//! HTTP through real gateways and real hyper servers: canary weights, header
//! matches, fault injection, circuit breaking, retries across hosts and
//! priorities, malformed requests, and WebSocket upgrades.

mod support;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{circuit_breakers::Thresholds, CircuitBreakers};
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, retry_policy::RetryHostPredicate, route_action,
    weighted_cluster::ClusterWeight, HeaderMatcher, RetryPolicy, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// A gateway with one HTTP listener on RDS route `routes`; returns it and the listener address.
async fn http_gateway(ads: &ScriptedAds) -> (isthmus_gateway::Gateway, std::net::SocketAddr) {
    ads.set(
        LDS,
        vec![named("http", http_listener("http", any_port(), rds("80")))],
    );
    let gw = gateway(ads, "sidecar", None).await;
    assert!(
        gw.wait_ready(WAIT).await,
        "gateway never became ready (RDS included)"
    );
    let at = gw.listener_address("http").expect("bound");
    (gw, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_and_header_match() {
    let v1 = HttpBackend::start("v1").await;
    let v2 = HttpBackend::start("v2").await;
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![
            named("v1", eds_cluster("v1")),
            named("v2", eds_cluster("v2")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named("v1", cla("v1", &[(0, &[v1.addr])])),
            named("v2", cla("v2", &[(0, &[v2.addr])])),
        ],
    );
    let mut jason = prefix_route("jason", "/", to_cluster("v2"));
    if let Some(m) = jason.r#match.as_mut() {
        m.headers = vec![HeaderMatcher {
            name: "end-user".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("jason".into())),
                ignore_case: false,
            })),
            ..Default::default()
        }];
    }
    let mut canary = prefix_route(
        "canary",
        "/",
        route_action_weighted(&[("v1", 90), ("v2", 10)]),
    );
    canary.request_headers_to_add = vec![set_header("x-added", "yes")];
    canary.response_headers_to_add = vec![set_header("x-route", "canary")];
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config("80", &["reviews", "reviews:9080"], vec![jason, canary]),
        )],
    );
    let (gw, at) = http_gateway(&ads).await;
    let c = client();

    let (mut n1, mut n2) = (0, 0);
    for _ in 0..2000 {
        let (status, h, body) = get(&c, at, "reviews:9080", "/p", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(h.get("x-route").map(|v| v.as_bytes()), Some(&b"canary"[..]));
        assert_eq!(
            h.get("x-seen-added").map(|v| v.as_bytes()),
            Some(&b"yes"[..])
        );
        match body.as_str() {
            "v1" => n1 += 1,
            "v2" => n2 += 1,
            other => panic!("unexpected backend {other}"),
        }
    }
    // 10% of 2,000 is 200; ±3 percentage points is ±60.
    assert!((140..=260).contains(&n2), "v2 got {n2} of 2000 (v1 {n1})");
    for _ in 0..50 {
        let (status, _, body) = get(&c, at, "reviews", "/p", &[("end-user", "jason")]).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "v2"),
            "header match goes to the subset"
        );
    }
    let (status, h, _) = get(&c, at, "ratings", "/p", &[]).await;
    assert_eq!(status, 404, "unknown authority");
    assert_eq!(
        h.get("x-envoy-response-flags").map(|v| v.as_bytes()),
        Some(&b"NR"[..])
    );
    // One keep-alive connection serves many requests: far fewer upstream connections than requests.
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    let ups =
        metric(&m, "isthmus_gateway_upstream_cx_total{cluster=\"v1\"}").expect("upstream_cx_total");
    assert!(
        ups < 100.0,
        "HTTP/1.1 keep-alive pooling: {ups} connections for {n1} requests"
    );
    let total = metric(&m, "istio_requests_total{destination_service=\"v1\"").or_else(|| {
        m.lines()
            .find(|l| {
                l.starts_with("istio_requests_total")
                    && l.contains("destination_service=\"v1\"")
                    && l.contains("response_code=\"200\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    });
    assert_eq!(
        total,
        Some(f64::from(n1)),
        "istio_requests_total counts every v1 request"
    );
    assert!(
        m.contains("istio_request_duration_milliseconds_bucket"),
        "duration histogram exported"
    );
    drop(gw);
}

fn route_action_weighted(
    w: &[(&str, u32)],
) -> envoy_types::pb::envoy::config::route::v3::RouteAction {
    envoy_types::pb::envoy::config::route::v3::RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters: w
                    .iter()
                    .map(|(n, x)| ClusterWeight {
                        name: (*n).into(),
                        weight: u32v(*x),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

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
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![delay, abort, prefix_route("rest", "/", to_cluster("app"))],
            ),
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
    ads.set(CDS, vec![named("app", cluster)]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app.addr])]))]);
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![prefix_route("all", "/", to_cluster("app"))],
            ),
        )],
    );
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
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config("80", &["*"], vec![prefix_route("all", "/", action)]),
        )],
    );
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
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config("80", &["*"], vec![prefix_route("all", "/", action)]),
        )],
    );
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
async fn malformed_and_oversized_requests_are_refused() {
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("app", eds_cluster("app"))]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app.addr])]))]);
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![prefix_route("all", "/", to_cluster("app"))],
            ),
        )],
    );
    let (gw, at) = http_gateway(&ads).await;
    async fn raw(at: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(at).await.expect("connect");
        s.write_all(req).await.expect("write");
        let mut out = vec![0u8; 256];
        let n = tokio::time::timeout(WAIT, s.read(&mut out))
            .await
            .expect("reply in time")
            .expect("read");
        String::from_utf8_lossy(&out[..n]).into_owned()
    }
    let r = raw(
        at,
        b"GET / HTTP/1.1\r\nHost: app\r\nthis is not a header\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(at, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "missing Host: {r}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = raw(at, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "oversized headers: {r}");
    assert_eq!(app.hits(), 0, "nothing malformed reaches the app");
    // The gateway is still fine.
    let (status, _, body) = get(&client(), at, "app", "/", &[]).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "app"));
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("app", eds_cluster("app"))]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app.addr])]))]);
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![prefix_route("all", "/", to_cluster("app"))],
            ),
        )],
    );
    let (_gw, at) = http_gateway(&ads).await;
    let mut s = tokio::net::TcpStream::connect(at).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "connection closed during the 101 head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"frames after the upgrade")
        .await
        .expect("write");
    let mut echo = vec![0u8; 24];
    tokio::time::timeout(WAIT, s.read_exact(&mut echo))
        .await
        .expect("in time")
        .expect("echo");
    assert_eq!(&echo, b"frames after the upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_over_delta_updates_routes_live_and_nacks_bad_ones() {
    let v1 = HttpBackend::start("v1").await;
    let v2 = HttpBackend::start("v2").await;
    let ads = ScriptedAds::start_delta().await;
    ads.set(
        CDS,
        vec![
            named("v1", eds_cluster("v1")),
            named("v2", eds_cluster("v2")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named("v1", cla("v1", &[(0, &[v1.addr])])),
            named("v2", cla("v2", &[(0, &[v2.addr])])),
        ],
    );
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![prefix_route("all", "/", to_cluster("v1"))],
            ),
        )],
    );
    let (_gw, at) = http_gateway(&ads).await;
    let c = client();
    assert_eq!(get(&c, at, "svc", "/", &[]).await.2, "v1");
    // A bad route configuration is NACKed and the last good one keeps serving.
    let mut bad = route_config(
        "80",
        &["*"],
        vec![prefix_route("all", "/", to_cluster("v2"))],
    );
    bad.virtual_hosts[0].domains = vec!["a*b".into()];
    ads.set(RDS, vec![named("80", bad)]);
    let nack = ads
        .wait_delta(WAIT, |r| {
            r.type_url == RDS
                && r.error_detail
                    .as_ref()
                    .is_some_and(|e| e.message.contains("domains[0]"))
        })
        .await;
    assert!(
        nack.is_some(),
        "bad RouteConfiguration NACKed with the field"
    );
    assert_eq!(
        get(&c, at, "svc", "/", &[]).await.2,
        "v1",
        "last good routes keep serving"
    );
    // A good update applies without touching the listener or the keep-alive connection.
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![prefix_route("all", "/", to_cluster("v2"))],
            ),
        )],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if get(&c, at, "svc", "/", &[]).await.2 == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "route update never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The control plane restarts (same address): RDS is subscribed again on
    // the new stream, routes keep serving meanwhile, and the new ones apply.
    let addr = ads.addr;
    ads.stop();
    drop(ads);
    assert_eq!(
        get(&c, at, "svc", "/", &[]).await.2,
        "v2",
        "static stability"
    );
    let ads = ScriptedAds::start_delta_on(addr).await;
    ads.set(
        CDS,
        vec![
            named("v1", eds_cluster("v1")),
            named("v2", eds_cluster("v2")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named("v1", cla("v1", &[(0, &[v1.addr])])),
            named("v2", cla("v2", &[(0, &[v2.addr])])),
        ],
    );
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![prefix_route("all", "/", to_cluster("v1"))],
            ),
        )],
    );
    ads.set(
        LDS,
        vec![named("http", http_listener("http", any_port(), rds("80")))],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        if get(&c, at, "svc", "/", &[]).await.2 == "v1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "routes from the restarted control plane never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config("80", &["*"], vec![prefix_route("all", "/", action)]),
        )],
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_limits_reuse() {
    use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    let mut one = eds_cluster("one");
    one.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(HttpProtocolOptions {
            common_http_protocol_options: Some(Common {
                max_requests_per_connection: u32v(1),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    ads.set(
        CDS,
        vec![named("one", one), named("many", eds_cluster("many"))],
    );
    ads.set(
        EDS,
        vec![
            named("one", cla("one", &[(0, &[app.addr])])),
            named("many", cla("many", &[(0, &[app.addr])])),
        ],
    );
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![
                    prefix_route("one", "/one", to_cluster("one")),
                    prefix_route("many", "/", to_cluster("many")),
                ],
            ),
        )],
    );
    let (gw, at) = http_gateway(&ads).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, at, "app", "/one", &[]).await.0, 200);
        assert_eq!(get(&c, at, "app", "/many", &[]).await.0, 200);
    }
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert_eq!(
        metric(&m, "isthmus_gateway_upstream_cx_total{cluster=\"one\"}"),
        Some(10.0)
    );
    assert_eq!(
        metric(&m, "isthmus_gateway_upstream_cx_total{cluster=\"many\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed() {
    use envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions as Common;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let app = HttpBackend::start("app").await;
    let ads = ScriptedAds::start().await;
    let mut c = eds_cluster("app");
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(HttpProtocolOptions {
            common_http_protocol_options: Some(Common {
                idle_timeout: Some(PbDuration {
                    seconds: 0,
                    nanos: 200_000_000,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    ads.set(CDS, vec![named("app", c)]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app.addr])]))]);
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config(
                "80",
                &["*"],
                vec![prefix_route("all", "/", to_cluster("app"))],
            ),
        )],
    );
    let (gw, at) = http_gateway(&ads).await;
    let client = client();
    assert_eq!(get(&client, at, "app", "/", &[]).await.0, 200);
    let active = |m: &str| metric(m, "isthmus_gateway_upstream_cx_active{cluster=\"app\"}");
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert_eq!(active(&m), Some(1.0), "kept alive after the request");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        if active(&m) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "idle connection never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&client, at, "app", "/", &[]).await.0,
        200,
        "a new connection after the idle close"
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
    ads.set(
        RDS,
        vec![named(
            "80",
            route_config("80", &["*"], vec![prefix_route("all", "/", action)]),
        )],
    );
    let (_gw, at) = http_gateway(&ads).await;
    let tcp = tokio::net::TcpStream::connect(at).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
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
