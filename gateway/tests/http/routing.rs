//! Route selection: weighted canary splits, header matches, headers added
//! by routes, unknown authorities, and route configurations updated live
//! over delta xDS (NACKs, restarts of the control plane).

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route_action, weighted_cluster::ClusterWeight,
    HeaderMatcher, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

use super::{http_gateway, u32v};
use crate::support::ads::ScriptedAds;
use crate::support::http::*;
use crate::support::resources::*;
use crate::support::*;

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

/// Clusters `v1` and `v2` at `v1`/`v2`, and RDS route `80` sending every
/// path to `v1`.
fn serve_v1(ads: &ScriptedAds, v1: std::net::SocketAddr, v2: std::net::SocketAddr) {
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
            named("v1", cla("v1", &[(0, &[v1])])),
            named("v2", cla("v2", &[(0, &[v2])])),
        ],
    );
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![prefix_route("all", "/", to_cluster("v1"))],
        )],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_over_delta_updates_routes_live_and_nacks_bad_ones() {
    let v1 = HttpBackend::start("v1").await;
    let v2 = HttpBackend::start("v2").await;
    let ads = ScriptedAds::start_delta().await;
    serve_v1(&ads, v1.addr, v2.addr);
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
        vec![any_host_routes(
            "80",
            vec![prefix_route("all", "/", to_cluster("v2"))],
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
    serve_v1(&ads, v1.addr, v2.addr);
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
