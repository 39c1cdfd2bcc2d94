//! ADS client behaviour against the scripted server: ACK/NACK, last good
//! config kept, bind failures rejected, readiness, static stability and
//! reconnection.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
use envoy_types::pb::google::protobuf::Any;
use support::ads::ScriptedAds;
use support::resources::*;
use support::*;

/// One plaintext outbound listener to one backend.
fn simple(ads: &ScriptedAds, backend: std::net::SocketAddr) {
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[backend])]))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_first_complete_config() {
    let ads = ScriptedAds::start().await;
    let gw = gateway(&ads, "sidecar", None).await;
    let (status, body) = admin_get(gw.admin_address(), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(admin_get(gw.admin_address(), "/healthz").await.0, 200);
    let first = ads
        .wait_request(WAIT, |r| r.type_url == CDS)
        .await
        .expect("CDS subscription");
    let node = first.node.expect("node in request");
    assert_eq!(
        node.id,
        "sidecar~127.0.0.1~x.default~default.svc.cluster.local"
    );
    let role = &node.metadata.expect("metadata").fields["ISTHMUS_ROLE"];
    assert_eq!(
        role.kind,
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            "sidecar".into()
        ))
    );
    assert!(
        first.resource_names.is_empty(),
        "CDS is a wildcard subscription"
    );
    // Clusters and listeners but no endpoints yet: still not ready.
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    assert!(ads.wait_ack(LDS, WAIT).await);
    assert!(
        ads.wait_request(WAIT, |r| r.type_url == EDS
            && r.resource_names == vec!["svc".to_string()])
            .await
            .is_some(),
        "EDS not subscribed by name"
    );
    assert_eq!(admin_get(gw.admin_address(), "/readyz").await.0, 503);
    let backend = Backend::start("b").await;
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[backend.addr])]))]);
    assert!(gw.wait_ready(WAIT).await);
    assert_eq!(admin_get(gw.admin_address(), "/readyz").await.0, 200);
    let (_, dump) = admin_get(gw.admin_address(), "/config_dump").await;
    let v: serde_json::Value = serde_json::from_str(&dump).expect("config dump is JSON");
    assert!(v["resources"]["listeners"]["out"].is_object(), "{dump}");
    assert!(
        v["clusters"]["svc"]["hosts"][0]["address"].is_string(),
        "{dump}"
    );
    let (_, metrics) = admin_get(gw.admin_address(), "/metrics").await;
    assert!(
        metric(
            &metrics,
            "isthmus_gateway_xds_updates_total{result=\"ack\",type=\"lds\"}"
        )
        .is_some(),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_listener_is_nacked_and_last_good_config_keeps_serving() {
    let backend = Backend::start("good").await;
    let ads = ScriptedAds::start().await;
    simple(&ads, backend.addr);
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");
    eventually_reply(out, "1", "good:").await;

    // An unsupported network filter in a second listener.
    let mut bad = outbound_listener("bad-listener", any_port(), "svc");
    bad.filter_chains[0].filters = vec![Filter {
        name: "envoy.filters.network.redis_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
                    .into(),
            value: vec![],
        })),
    }];
    ads.set(
        LDS,
        vec![
            named("out", outbound_listener("out", any_port(), "svc")),
            named("bad-listener", bad),
        ],
    );
    let v = ads.version(LDS).to_string();
    let nack = ads
        .wait_request(WAIT, |r| r.type_url == LDS && r.error_detail.is_some())
        .await
        .expect("no NACK");
    let msg = nack.error_detail.expect("detail").message;
    assert!(
        msg.contains("bad-listener") && msg.contains("redis_proxy"),
        "NACK does not name the resource: {msg}"
    );
    assert_ne!(
        nack.version_info, v,
        "NACK must carry the last accepted version"
    );
    assert_eq!(roundtrip(out, "2").await.expect("still serving"), "good:2");
    assert!(gw.listener_address("bad-listener").is_none());

    // A listener whose port is taken is NACKed too (binds happen before commit).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    ads.set(
        LDS,
        vec![
            named("out", outbound_listener("out", any_port(), "svc")),
            named(
                "clash",
                outbound_listener("clash", taken.local_addr().expect("addr"), "svc"),
            ),
        ],
    );
    let nack = ads
        .wait_request(WAIT, |r| {
            r.type_url == LDS
                && r.error_detail
                    .as_ref()
                    .is_some_and(|e| e.message.contains("clash"))
        })
        .await
        .expect("no NACK for the bind failure");
    assert!(nack
        .error_detail
        .expect("detail")
        .message
        .contains("cannot bind"));
    assert_eq!(roundtrip(out, "3").await.expect("still serving"), "good:3");

    // A good update is ACKed again.
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    assert!(ads.wait_ack(LDS, WAIT).await);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_cluster_nack_names_field() {
    let backend = Backend::start("good").await;
    let ads = ScriptedAds::start().await;
    simple(&ads, backend.addr);
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let mut bad = eds_cluster("broken");
    bad.lb_policy = 6; // CLUSTER_PROVIDED
    ads.set(
        CDS,
        vec![named("svc", eds_cluster("svc")), named("broken", bad)],
    );
    let nack = ads
        .wait_request(WAIT, |r| r.type_url == CDS && r.error_detail.is_some())
        .await
        .expect("no NACK");
    let msg = nack.error_detail.expect("detail").message;
    assert!(msg.contains("Cluster \"broken\": lb_policy"), "{msg}");
    let out = gw.listener_address("out").expect("bound");
    assert_eq!(roundtrip(out, "x").await.expect("still serving"), "good:x");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_without_control_plane_and_reconnects() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let ads = ScriptedAds::start().await;
    simple(&ads, one.addr);
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");
    eventually_reply(out, "a", "one:").await;

    let addr = ads.addr;
    ads.stop();
    drop(ads);
    // Static stability: traffic keeps flowing with the control plane gone.
    for i in 0..5 {
        assert_eq!(
            roundtrip(out, &i.to_string()).await.expect("serving"),
            format!("one:{i}")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The control plane comes back (same address) with new endpoints.
    let ads = ScriptedAds::start_on(addr).await;
    simple(&ads, two.addr);
    eventually_reply(out, "b", "two:").await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ads_applies_changes_removals_and_nacks() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let ads = ScriptedAds::start_delta().await;
    simple(&ads, one.addr);
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    assert!(
        ads.requests().is_empty(),
        "delta is preferred when the server offers it"
    );
    assert!(!ads.delta_requests().is_empty());
    let out = gw.listener_address("out").expect("bound");
    eventually_reply(out, "a", "one:").await;

    // Changed endpoints arrive as a delta.
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[two.addr])]))]);
    eventually_reply(out, "b", "two:").await;

    // An invalid resource is NACKed by nonce with a precise message.
    let mut bad = eds_cluster("bad-cluster");
    bad.lb_policy = 6;
    ads.set(
        CDS,
        vec![named("svc", eds_cluster("svc")), named("bad-cluster", bad)],
    );
    let nack = ads
        .wait_delta(WAIT, |r| r.type_url == CDS && r.error_detail.is_some())
        .await
        .expect("no delta NACK");
    assert!(nack
        .error_detail
        .expect("detail")
        .message
        .contains("Cluster \"bad-cluster\": lb_policy"));
    assert!(!nack.response_nonce.is_empty());
    assert_eq!(roundtrip(out, "c").await.expect("still serving"), "two:c");

    // A second listener appears, then is removed by name.
    ads.set(
        LDS,
        vec![
            named("out", outbound_listener("out", any_port(), "svc")),
            named("extra", outbound_listener("extra", any_port(), "svc")),
        ],
    );
    let extra = gw
        .wait_listener("extra", WAIT)
        .await
        .expect("extra listener bound");
    eventually_reply(extra, "d", "two:").await;
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.listener_address("extra").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "removed listener still bound"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(roundtrip(out, "e").await.expect("still serving"), "two:e");
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_xds_address_fails_start() {
    init();
    let cfg = isthmus_gateway::GatewayConfig::new(
        "not a uri",
        node("sidecar~1~x~y", "sidecar"),
        "127.0.0.1:0".parse().expect("addr"),
    );
    let err = isthmus_gateway::Gateway::start(cfg)
        .await
        .expect_err("must fail");
    assert!(err.to_string().contains("not a valid URI"), "{err}");
}
