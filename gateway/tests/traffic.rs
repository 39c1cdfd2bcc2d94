//! Traffic behaviour: priority failover with outlier ejection, live config
//! updates under load without failed connections, circuit breaking, and
//! PERMISSIVE inbound (mTLS and plaintext on one port).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::ads::ScriptedAds;
use support::pki::Ca;
use support::resources::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_failover_when_backend_dies() {
    let mut primary = Backend::start("p0").await;
    let secondary = Backend::start("p1").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", with_outlier(eds_cluster("svc"), 1))]);
    ads.set(
        EDS,
        vec![named(
            "svc",
            cla("svc", &[(0, &[primary.addr]), (1, &[secondary.addr])]),
        )],
    );
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");
    for i in 0..10 {
        assert_eq!(
            roundtrip(out, &i.to_string()).await.expect("p0"),
            format!("p0:{i}"),
            "healthy P0 takes all traffic"
        );
    }
    primary.kill().await;
    // Every connection still succeeds: the failed attempt ejects P0's host
    // and the retry lands in P1.
    for i in 0..10 {
        let r = roundtrip(out, &i.to_string())
            .await
            .expect("failover without failed connections");
        assert_eq!(r, format!("p1:{i}"));
    }
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "isthmus_gateway_outlier_detection_ejections_total{cluster=\"svc\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let (_, dump) = admin_get(gw.admin_address(), "/config_dump").await;
    let v: serde_json::Value = serde_json::from_str(&dump).expect("json");
    assert_eq!(
        v["clusters"]["svc"]["priority_load_percent"][1], 100.0,
        "{dump}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_under_load_fail_no_connection() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![
            named("svc-a", eds_cluster("svc-a")),
            named("svc-b", eds_cluster("svc-b")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named("svc-a", cla("svc-a", &[(0, &[a.addr])])),
            named("svc-b", cla("svc-b", &[(0, &[b.addr])])),
        ],
    );
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc-a"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let seen_b = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, ok, failed, seen_b) = (stop.clone(), ok.clone(), failed.clone(), seen_b.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let msg = format!("{c}-{n}");
                match roundtrip(out, &msg).await {
                    Ok(r) if r == format!("a:{msg}") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r == format!("b:{msg}") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen_b.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!("unexpected reply {r:?}"),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("client {c}: {e}");
                    }
                }
            }
        }));
    }
    // Flip the listener's route between clusters, and move endpoints,
    // several times while traffic flows.
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let target = if round % 2 == 0 { "svc-b" } else { "svc-a" };
        ads.set(
            LDS,
            vec![named("out", outbound_listener("out", any_port(), target))],
        );
        assert!(
            ads.wait_ack(LDS, WAIT).await,
            "LDS update {round} not ACKed"
        );
        ads.set(
            CDS,
            vec![
                named("svc-a", eds_cluster("svc-a")),
                named("svc-b", with_outlier(eds_cluster("svc-b"), 3)),
            ],
        );
        assert!(
            ads.wait_ack(CDS, WAIT).await,
            "CDS update {round} not ACKed"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "connections failed during live updates"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too little traffic to mean anything"
    );
    assert!(
        seen_b.load(Ordering::Relaxed) > 0,
        "the new route never took effect"
    );
    assert_eq!(
        gw.listener_address("out"),
        Some(out),
        "in-place update must keep the socket"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_counts_overflow() {
    // A backend that holds connections open until the client closes.
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend = sock.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = sock.accept().await {
            conns.push(s);
        }
    });
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![named("svc", with_max_connections(eds_cluster("svc"), 1))],
    );
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[backend])]))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");

    let mut first = tokio::net::TcpStream::connect(out).await.expect("first");
    first.write_all(b"hold").await.expect("write");
    // Wait until the first connection occupies the budget.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        if metric(&m, "isthmus_gateway_upstream_cx_active{cluster=\"svc\"}") == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first upstream connection never became active"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = tokio::net::TcpStream::connect(out).await.expect("second");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(WAIT, second.read(&mut buf))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0, "overflowing connection must be closed");
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "isthmus_gateway_upstream_cx_overflow_total{cluster=\"svc\"}"
        ),
        Some(1.0),
        "{m}"
    );
    drop(first);
    hold.abort();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_inbound_accepts_mtls_and_plaintext_on_one_port() {
    init();
    let root = Ca::root();
    let inter = root.intermediate("c");
    let app = Backend::start("app").await;
    let ads = ScriptedAds::start().await;
    ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads.set(
        CDS,
        vec![named("inbound|80||", eds_cluster("inbound|80||"))],
    );
    ads.set(
        EDS,
        vec![named(
            "inbound|80||",
            cla("inbound|80||", &[(0, &[app.addr])]),
        )],
    );
    let caller = "spiffe://cluster.local/ns/default/sa/caller";
    ads.set(
        LDS,
        vec![named(
            "in",
            inbound_listener("in", any_port(), "inbound|80||", &[caller], true),
        )],
    );
    let (_tx, cert) = inter.workload(&root, "spiffe://cluster.local/ns/default/sa/app");
    let gw = gateway(&ads, "sidecar", Some(cert)).await;
    assert!(gw.wait_ready(WAIT).await);
    let inbound = gw.listener_address("in").expect("bound");
    assert_eq!(
        roundtrip(inbound, "plain").await.expect("plaintext"),
        "app:plain"
    );

    // mTLS through a sidecar-style client on the same port.
    let ads_c = ScriptedAds::start().await;
    let sni = "outbound_.80_._.app.default.svc.cluster.local";
    ads_c.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    ads_c.set(
        CDS,
        vec![named(
            "to-app",
            mtls_cluster("to-app", sni, &["spiffe://cluster.local/ns/default/sa/app"]),
        )],
    );
    ads_c.set(
        EDS,
        vec![named("to-app", cla("to-app", &[(0, &[inbound])]))],
    );
    ads_c.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "to-app"))],
    );
    let (_tx2, cert2) = inter.workload(&root, caller);
    let client = gateway(&ads_c, "sidecar", Some(cert2)).await;
    assert!(client.wait_ready(WAIT).await);
    let out = client.listener_address("out").expect("bound");
    assert_eq!(roundtrip(out, "tls").await.expect("mtls"), "app:tls");
    let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
    assert!(m.contains(&format!("source_principal=\"{caller}\"")), "{m}");
    client.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_stops_accepting_but_open_connection_finishes() {
    let app = Backend::start("app").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("svc", eds_cluster("svc"))]);
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &[app.addr])]))]);
    ads.set(
        LDS,
        vec![named("out", outbound_listener("out", any_port(), "svc"))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");
    // Open a connection and send half the request.
    let mut open = tokio::net::TcpStream::connect(out).await.expect("connect");
    open.write_all(b"before-").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    ads.set(LDS, vec![]);
    assert!(ads.wait_ack(LDS, WAIT).await);
    assert!(gw.listener_address("out").is_none());
    assert!(
        roundtrip(out, "new").await.is_err(),
        "removed listener still accepts"
    );
    open.write_all(b"after").await.expect("write");
    open.shutdown().await.expect("shutdown");
    let mut reply = String::new();
    open.read_to_string(&mut reply).await.expect("read");
    assert_eq!(reply, "app:before-after", "draining connection was cut");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_chain_drains_its_connections_unchanged_chain_keeps_them() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        vec![
            named("svc", eds_cluster("svc")),
            named("svc2", eds_cluster("svc2")),
        ],
    );
    ads.set(
        EDS,
        vec![
            named("svc", cla("svc", &[(0, &[one.addr])])),
            named("svc2", cla("svc2", &[(0, &[two.addr])])),
        ],
    );
    let listeners = |out_cluster: &str| {
        vec![
            named("out", outbound_listener("out", any_port(), out_cluster)),
            named("other", outbound_listener("other", any_port(), "svc")),
        ]
    };
    ads.set(LDS, listeners("svc"));
    let drain = Duration::from_millis(300);
    let gw = gateway_with_drain(&ads, "sidecar", None, drain).await;
    assert!(gw.wait_ready(WAIT).await);
    let out = gw.listener_address("out").expect("bound");
    let other = gw.listener_address("other").expect("bound");

    let mut a = tokio::net::TcpStream::connect(out).await.expect("a");
    a.write_all(b"a-").await.expect("write");
    let mut b = tokio::net::TcpStream::connect(other).await.expect("b");
    b.write_all(b"b-").await.expect("write");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        if metric(&m, "isthmus_gateway_upstream_cx_active{cluster=\"svc\"}") == Some(2.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // "out" gets a different chain; "other" is unchanged.
    let updated = std::time::Instant::now();
    ads.set(LDS, listeners("svc2"));
    assert!(ads.wait_ack(LDS, WAIT).await);
    let mut buf = Vec::new();
    let r = tokio::time::timeout(WAIT, a.read_to_end(&mut buf))
        .await
        .expect("connection on the changed chain was never drained");
    assert!(
        r.is_err() || buf.is_empty(),
        "drained connection got data: {buf:?}"
    );
    assert!(updated.elapsed() >= drain, "closed before the drain time");
    // New connections on "out" use the new chain.
    eventually_reply(out, "new", "two:").await;

    // Well past the drain time, the connection on the unchanged listener still works.
    tokio::time::sleep(drain * 2).await;
    b.write_all(b"rest").await.expect("write");
    b.shutdown().await.expect("shutdown");
    let mut reply = String::new();
    b.read_to_string(&mut reply).await.expect("read");
    assert_eq!(reply, "one:b-rest");
    gw.shutdown().await;
}
