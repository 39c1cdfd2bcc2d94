//! The end-to-end scenario run in `net`: the remote sidecar, the servers
//! outside the registry, the pod's proxy and application, then outbound and
//! passthrough (ALLOW_ANY), inbound mTLS (STRICT), and REGISTRY_ONLY.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::app_checks::{outbound_and_passthrough, registry_only_checks};
use crate::netns::in_netns;
use crate::peers::{plain_tcp_listener, PlainHttp};
use crate::pod_proxy::{script_pod, spawn_proxy, write_child_inputs};
use crate::support::ads::ScriptedAds;
use crate::support::http::RDS;
use crate::support::pki::Ca;
use crate::support::resources::{
    cla, eds_cluster, inbound_listener, mtls_cluster, named, rootca, CDS, EDS, LDS, SDS,
};
use crate::support::{eventually_reply, gateway, init, roundtrip, Backend, WAIT};
use crate::{CLIENT_ID, NET_IP, POD_ID, POD_IP, REMOTE_ID};

pub(crate) async fn scenario(pod: String, fixture: String, registry_only: String) {
    init();
    let root = Ca::root();
    let inter = root.intermediate("cluster-a");
    let net_ip = |port: u16| -> SocketAddr { format!("{NET_IP}:{port}").parse().expect("addr") };

    // The remote workload: its sidecar (STRICT mTLS, accepts only the pod's
    // identity) in front of an echo server.
    let echo_app = Backend::start_on(net_ip(0), "echo").await;
    let remote_ads = ScriptedAds::start_on(net_ip(0)).await;
    remote_ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    remote_ads.set(
        CDS,
        vec![named("inbound|7000||", eds_cluster("inbound|7000||"))],
    );
    remote_ads.set(
        EDS,
        vec![named(
            "inbound|7000||",
            cla("inbound|7000||", &[(0, &[echo_app.addr])]),
        )],
    );
    remote_ads.set(
        LDS,
        vec![named(
            "virtualInbound",
            inbound_listener(
                "virtualInbound",
                net_ip(0),
                "inbound|7000||",
                &[POD_ID],
                false,
            ),
        )],
    );
    let (_rtx, remote_cert) = inter.workload(&root, REMOTE_ID);
    let remote = gateway(&remote_ads, "sidecar", Some(remote_cert)).await;
    assert!(remote.wait_ready(WAIT).await, "remote sidecar not ready");
    let remote_addr = remote
        .listener_address("virtualInbound")
        .expect("remote inbound bound");

    // A server outside the registry, and an HTTP one on a port the mesh
    // knows (8080) for the catch-all virtual host.
    let outside = Backend::start_on(net_ip(0), "outside").await;
    let outside_http = PlainHttp::start(net_ip(8080)).await;

    // The pod's sidecar: ADS here, the proxy a child process in `pod`.
    let ads = ScriptedAds::start_on(net_ip(0)).await;
    script_pod(&ads, &fixture, &root.pem, remote_addr);
    let dir = tempfile::tempdir().expect("tempdir");
    write_child_inputs(dir.path(), &inter, &root, &ads.url());
    let child_dir = dir.path().to_path_buf();
    let pod_ns = pod.clone();
    let _proxy = in_netns(&pod_ns, move || spawn_proxy(&child_dir));
    assert!(
        ads.wait_ack(LDS, WAIT * 2).await,
        "the pod's proxy never ACKed the captured listeners"
    );

    // The application in the pod: a plain echo on 127.0.0.1:9080 (inbound).
    let pod_app = pod.clone();
    std::thread::spawn(move || {
        in_netns(&pod_app, || {
            let l = std::net::TcpListener::bind("127.0.0.1:9080").expect("bind app");
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).is_ok() {
                        let mut out = b"pod-app:".to_vec();
                        out.extend_from_slice(&buf);
                        let _ = s.write_all(&out);
                    }
                });
            }
        })
    });

    let pod2 = pod.clone();
    tokio::task::spawn_blocking(move || outbound_and_passthrough(&pod2, outside.addr))
        .await
        .expect("outbound checks");

    // Inbound: a client sidecar in `net` originates mTLS to POD_IP:9080;
    // iptables sends it to 15006, where the chain for port 9080 terminates it.
    let client_ads = ScriptedAds::start_on(net_ip(0)).await;
    const TO_POD: &str = "outbound|9080||pod.foo.svc.cluster.local";
    let pod_app_addr: SocketAddr = format!("{POD_IP}:9080").parse().expect("addr");
    client_ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    client_ads.set(
        CDS,
        vec![named(
            TO_POD,
            mtls_cluster(
                TO_POD,
                "outbound_.9080_._.pod.foo.svc.cluster.local",
                &[POD_ID],
            ),
        )],
    );
    client_ads.set(
        EDS,
        vec![named(TO_POD, cla(TO_POD, &[(0, &[pod_app_addr])]))],
    );
    client_ads.set(
        LDS,
        vec![named(
            "to-pod",
            plain_tcp_listener("to-pod", net_ip(0), TO_POD),
        )],
    );
    let (_ctx, client_cert) = inter.workload(&root, CLIENT_ID);
    let client = gateway(&client_ads, "sidecar", Some(client_cert)).await;
    assert!(client.wait_ready(WAIT).await, "client sidecar not ready");
    let to_pod = client.listener_address("to-pod").expect("to-pod bound");
    let reply = eventually_reply(to_pod, "hello-inbound", "pod-app:").await;
    assert_eq!(reply, "pod-app:hello-inbound");
    // Plaintext to the same port is captured too, and STRICT refuses it.
    let plain = roundtrip(pod_app_addr, "plain").await;
    assert!(
        !plain.as_deref().unwrap_or("").starts_with("pod-app:"),
        "plaintext reached the app past STRICT mTLS: {plain:?}"
    );

    // REGISTRY_ONLY: the same proxy, the Sidecar's policy changed.
    let before = ads.version(LDS);
    script_pod(&ads, &registry_only, &root.pem, remote_addr);
    let deadline = Instant::now() + WAIT;
    while ads.version(LDS) == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ads.wait_ack(LDS, WAIT).await,
        "REGISTRY_ONLY listeners not ACKed"
    );
    assert!(
        ads.wait_ack(RDS, WAIT).await,
        "REGISTRY_ONLY routes not ACKed"
    );
    let pod3 = pod.clone();
    let hits_before = outside_http.hits();
    tokio::task::spawn_blocking(move || registry_only_checks(&pod3, outside.addr))
        .await
        .expect("registry-only checks");
    assert_eq!(
        outside_http.hits(),
        hits_before,
        "block_all must not forward to the unknown host"
    );
    drop(client);
    drop(remote);
}
