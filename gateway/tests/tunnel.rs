//! The QUIC tunnel between east-west gateways:
//! app → sidecar A (mTLS origination) → east-west A (SNI passthrough into the
//! QUIC tunnel) ⇒ east-west B (stream dispatched by SNI like its TCP
//! passthrough listener) → sidecar B (mTLS termination) → app.
//! The same call also works over the TCP fallback, with the same result.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use isthmus_gateway::{Gateway, GatewayConfig};
use support::ads::ScriptedAds;
use support::pki::Ca;
use support::resources::*;
use support::*;

const TD: &str = "spiffe://cluster.local/ns/default/sa";
const GW: &str = "spiffe://cluster.local/ns/istio-system/sa";
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";
const SNI: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";

/// A loopback port free for both TCP and UDP (the tunnel shares the
/// gateway's passthrough port number, like 15443/tcp and 15443/udp).
fn tcp_and_udp_port() -> SocketAddr {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let addr = tcp.local_addr().expect("addr");
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// An east-west gateway with its own certificate; `tunnel` is the UDP
/// address of its QUIC tunnel (the same port as its TCP passthrough listener).
async fn east_west(
    ads: &ScriptedAds,
    cert: isthmus_gateway::CertReceiver,
    tunnel: Option<SocketAddr>,
) -> Gateway {
    init();
    let mut cfg = GatewayConfig::new(
        ads.url(),
        node(
            "router~127.0.0.1~ew.istio-system~istio-system.svc.cluster.local",
            "east-west",
        ),
        any_port(),
    );
    cfg.cert = Some(cert);
    cfg.tunnel = tunnel.map(|bind| isthmus_gateway::tunnel::TunnelConfig { bind });
    Gateway::start(cfg).await.expect("east-west start")
}

fn tunnel_metadata() -> Metadata {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "tunnel".to_string(),
        Value {
            kind: Some(Kind::StringValue("quic".into())),
        },
    );
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(
        "isthmus".to_string(),
        Struct {
            fields: fields.into_iter().collect(),
        },
    );
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_tunnel_carries_the_same_traffic_as_tcp_passthrough() {
    init();
    let root = Ca::root();
    let inter_a = root.intermediate("cluster-a");
    let inter_b = root.intermediate("cluster-b");
    let productpage = format!("{TD}/productpage");
    let reviews = format!("{TD}/reviews");

    // Cluster B: app, sidecar, east-west gateway with the tunnel.
    let app = Backend::start("reviews-v1").await;
    let ads_b = ScriptedAds::start().await;
    script_inbound_sidecar(&ads_b, &root.pem, app.addr, &[&productpage]);
    let (_cb, cert_b) = inter_b.workload(&root, &reviews);
    let sidecar_b = gateway(&ads_b, "sidecar", Some(cert_b)).await;
    assert!(sidecar_b.wait_ready(WAIT).await);
    let inbound = sidecar_b.listener_address("virtualInbound").expect("bound");

    let ew_b_addr = tcp_and_udp_port();
    let ads_ewb = ScriptedAds::start().await;
    ads_ewb.set(CDS, vec![named(SNI, eds_cluster(SNI))]);
    ads_ewb.set(EDS, vec![named(SNI, cla(SNI, &[(0, &[inbound])]))]);
    ads_ewb.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", ew_b_addr, &[(SNI, SNI)]),
        )],
    );
    let (_cewb, cert_ewb) = inter_b.workload(&root, &format!("{GW}/eastwest-b"));
    let ew_b = east_west(&ads_ewb, cert_ewb, Some(ew_b_addr)).await;
    assert!(ew_b.wait_ready(WAIT).await);
    assert_eq!(ew_b.listener_address("ew"), Some(ew_b_addr));
    assert_eq!(ew_b.tunnel_address(), Some(ew_b_addr));

    // Cluster A: two east-west gateways sending to B: one with the tunnel, one without.
    let mut peer = eds_cluster("peer-b");
    peer.metadata = Some(tunnel_metadata());
    let setup_ew_a = |ads: &ScriptedAds| {
        ads.set(CDS, vec![named("peer-b", peer.clone())]);
        ads.set(
            EDS,
            vec![named("peer-b", cla("peer-b", &[(0, &[ew_b_addr])]))],
        );
    };
    let ads_ewa = ScriptedAds::start().await;
    setup_ew_a(&ads_ewa);
    let ewa_addr = tcp_and_udp_port();
    ads_ewa.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", ewa_addr, &[(SNI, "peer-b")]),
        )],
    );
    let (_cewa, cert_ewa) = inter_a.workload(&root, &format!("{GW}/eastwest-a"));
    let ew_a = east_west(&ads_ewa, cert_ewa, Some(ewa_addr)).await;
    assert!(ew_a.wait_ready(WAIT).await);

    let ads_ewa_tcp = ScriptedAds::start().await;
    setup_ew_a(&ads_ewa_tcp);
    ads_ewa_tcp.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", any_port(), &[(SNI, "peer-b")]),
        )],
    );
    let (_cewa2, cert_ewa2) = inter_a.workload(&root, &format!("{GW}/eastwest-a"));
    let ew_a_tcp = east_west(&ads_ewa_tcp, cert_ewa2, None).await;
    assert!(ew_a_tcp.wait_ready(WAIT).await);

    // A peer whose tunnel is down (B's gateway without QUIC): the tunnel
    // handshake fails once and the connections fall back to TCP.
    let ads_ewb_tcp = ScriptedAds::start().await;
    ads_ewb_tcp.set(CDS, vec![named(SNI, eds_cluster(SNI))]);
    ads_ewb_tcp.set(EDS, vec![named(SNI, cla(SNI, &[(0, &[inbound])]))]);
    ads_ewb_tcp.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", any_port(), &[(SNI, SNI)]),
        )],
    );
    let (_cewb2, cert_ewb2) = inter_b.workload(&root, &format!("{GW}/eastwest-b"));
    let ew_b_tcp = east_west(&ads_ewb_tcp, cert_ewb2, None).await;
    assert!(ew_b_tcp.wait_ready(WAIT).await);
    let ew_b_tcp_addr = ew_b_tcp.listener_address("ew").expect("bound");
    let ads_ewa_down = ScriptedAds::start().await;
    ads_ewa_down.set(CDS, vec![named("peer-b", peer.clone())]);
    ads_ewa_down.set(
        EDS,
        vec![named("peer-b", cla("peer-b", &[(0, &[ew_b_tcp_addr])]))],
    );
    let ewa_down_addr = tcp_and_udp_port();
    ads_ewa_down.set(
        LDS,
        vec![named(
            "ew",
            passthrough_listener("ew", ewa_down_addr, &[(SNI, "peer-b")]),
        )],
    );
    let (_cewa3, cert_ewa3) = inter_a.workload(&root, &format!("{GW}/eastwest-a"));
    let ew_a_down = east_west(&ads_ewa_down, cert_ewa3, Some(ewa_down_addr)).await;
    assert!(ew_a_down.wait_ready(WAIT).await);

    // Sidecar A, once towards each east-west gateway of A.
    let mut replies = Vec::new();
    for (ew, label) in [
        (&ew_a, "quic"),
        (&ew_a_tcp, "tcp"),
        (&ew_a_down, "fallback"),
    ] {
        let via = ew.listener_address("ew").expect("bound");
        let ads_a = ScriptedAds::start().await;
        ads_a.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
        ads_a.set(
            CDS,
            vec![named(CLUSTER, {
                // Sidecar A's budget (connect + TLS) covers one failed tunnel
                // handshake at the east-west gateway (peer-b's connect timeout, 1 s).
                let mut mesh = mtls_cluster(CLUSTER, SNI, &[&reviews]);
                mesh.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 5,
                    nanos: 0,
                });
                mesh
            })],
        );
        ads_a.set(EDS, vec![named(CLUSTER, cla(CLUSTER, &[(0, &[via])]))]);
        ads_a.set(
            LDS,
            vec![named("out", outbound_listener("out", any_port(), CLUSTER))],
        );
        let (_ca, cert_a) = inter_a.workload(&root, &productpage);
        let sidecar_a = gateway(&ads_a, "sidecar", Some(cert_a)).await;
        assert!(sidecar_a.wait_ready(WAIT).await);
        let out = sidecar_a.listener_address("out").expect("bound");
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                roundtrip(out, &format!("{label}-{i}"))
                    .await
                    .unwrap_or_else(|e| panic!("{label} call {i}: {e}")),
            );
        }
        replies.push(got);
    }
    assert_eq!(
        replies[0],
        (0..5)
            .map(|i| format!("reviews-v1:quic-{i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        replies[1],
        (0..5)
            .map(|i| format!("reviews-v1:tcp-{i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        replies[2],
        (0..5)
            .map(|i| format!("reviews-v1:fallback-{i}"))
            .collect::<Vec<_>>()
    );
    let (_, m) = admin_get(ew_b_tcp.admin_address(), "/metrics").await;
    assert_eq!(
        metric(&m, "isthmus_gateway_downstream_cx_total{listener=\"ew\"}"),
        Some(5.0)
    );
    // The tunnel calls never touched B's TCP listener; the fallback ones did.
    let (_, m) = admin_get(ew_b.admin_address(), "/metrics").await;
    assert_eq!(
        metric(&m, "isthmus_gateway_downstream_cx_total{listener=\"ew\"}"),
        Some(5.0),
        "only the 5 TCP-fallback connections arrived over TCP:\n{m}"
    );
}
