//! The sidecar DNS proxy: names from the control plane's name table (sent
//! over ADS as Istio's NDS `NameTable`) are answered locally — a service
//! that exists only in another cluster resolves to the sidecar's outbound
//! listener, and an HTTP call to the answer reaches the service — while
//! every other name is forwarded to the upstream resolver. `dig` is the
//! independent client, over UDP and TCP.

mod support;
#[path = "support/testdns.rs"]
mod testdns;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use isthmus_gateway::dnsproxy::{NameInfo, NameTable, NAME_TABLE_RESOURCE, NAME_TABLE_TYPE};
use isthmus_gateway::{Gateway, GatewayConfig};
use support::ads::ScriptedAds;
use support::http::{
    any_host_routes, client, get, http_listener, prefix_route, rds, to_cluster, HttpBackend,
};
use support::resources::*;
use support::*;
use testdns::TestDns;

const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const REMOTE: &str = "reviews.bookinfo.svc.cluster.local";
const REMOTE_SET: &str = "reviews.bookinfo.svc.clusterset.local";

fn table(entries: &[(&str, &[&str], &str)]) -> NameTable {
    let mut t = NameTable::default();
    for (host, alt, ip) in entries {
        t.table.insert(
            host.to_string(),
            NameInfo {
                ips: vec![ip.to_string()],
                registry: "Remote".into(),
                alt_hosts: alt.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        );
    }
    t
}

/// `dig` answers (`+short`), or a clear failure when dig is missing.
fn dig(server: SocketAddr, name: &str, rtype: &str, tcp: bool) -> Option<String> {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args([name, rtype, "+short", "+time=2", "+tries=1"]);
    if tcp {
        cmd.arg("+tcp");
    }
    match cmd.output() {
        Ok(o) => Some(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Err(e) if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("skipping dig checks: {e}");
            None
        }
        Err(e) => panic!("dig is needed (apt-get install dnsutils; .ci/run installs it): {e}"),
    }
}

/// `dig` status line (NOERROR, NXDOMAIN, ...).
fn dig_status(server: SocketAddr, name: &str) -> Option<String> {
    let o = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            name,
            "A",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_string)
}

async fn wait_answer(server: SocketAddr, name: &str, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (srv, n) = (server, name.to_string());
        let got = tokio::task::spawn_blocking(move || dig(srv, &n, "A", false))
            .await
            .expect("dig task")
            .unwrap_or_else(|| want.to_string());
        if got == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_remote_only_services_from_the_name_table_and_forwards_the_rest() {
    init();
    let upstream = TestDns::start().await;
    upstream.set("example.org", &[IpAddr::from([192, 0, 2, 7])], 60);

    // The remote service is reached through the sidecar's outbound
    // listener (explicit-listener mode): the name table answers with the
    // listener's address.
    let backend = HttpBackend::start("reviews-in-cluster-b").await;
    let ads = ScriptedAds::start().await;
    ads.set(CDS, vec![named("reviews", eds_cluster("reviews"))]);
    ads.set(
        EDS,
        vec![named("reviews", cla("reviews", &[(0, &[backend.addr])]))],
    );
    ads.set(
        RDS,
        vec![any_host_routes(
            "r",
            vec![prefix_route("all", "/", to_cluster("reviews"))],
        )],
    );
    ads.set(
        LDS,
        vec![named("out", http_listener("out", any_port(), rds("r")))],
    );
    ads.set(
        NAME_TABLE_TYPE,
        vec![(
            NAME_TABLE_RESOURCE.to_string(),
            envoy_types::util::pack_any(table(&[(REMOTE, &[REMOTE_SET], "127.0.0.1")])),
        )],
    );
    let mut cfg = GatewayConfig::new(
        ads.url(),
        node(
            "sidecar~127.0.0.1~productpage.bookinfo~bookinfo.svc.cluster.local",
            "sidecar",
        ),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.dns_proxy = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.resolver.upstream = vec![upstream.addr];
    cfg.drain_time = Duration::from_secs(1);
    let gw = Gateway::start(cfg).await.expect("gateway");
    assert!(gw.wait_ready(WAIT).await, "sidecar not ready");
    let out = gw.wait_listener("out", WAIT).await.expect("listener");
    let proxy = gw.dns_proxy_address().expect("DNS proxy runs");

    // Both names of the remote-only service, over UDP and TCP.
    assert_eq!(
        wait_answer(proxy, REMOTE_SET, "127.0.0.1").await,
        "127.0.0.1"
    );
    let p = proxy;
    let (udp, tcp) = tokio::task::spawn_blocking(move || {
        (dig(p, REMOTE, "A", false), dig(p, REMOTE, "A", true))
    })
    .await
    .expect("dig");
    if let (Some(udp), Some(tcp)) = (udp, tcp) {
        assert_eq!(udp, "127.0.0.1");
        assert_eq!(tcp, "127.0.0.1");
    }
    assert!(
        !upstream.asked().iter().any(|n| n.starts_with("reviews.")),
        "table names must not be forwarded: {:?}",
        upstream.asked()
    );

    // A real call to the answer reaches the service.
    let resolver =
        isthmus_gateway::resolve::Resolver::new(&isthmus_gateway::resolve::ResolverOptions {
            upstream: vec![proxy],
            timeout: Some(Duration::from_secs(2)),
        })
        .expect("resolver");
    let answer = resolver
        .resolve(REMOTE_SET, isthmus_gateway::config::LookupFamily::V4Only)
        .await
        .expect("resolves through the proxy");
    let at = SocketAddr::new(answer.addrs[0], out.port());
    let (status, _, body) = get(&client(), at, REMOTE_SET, "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "reviews-in-cluster-b");

    // Everything else goes upstream, answers relayed as the upstream sent them.
    let p = proxy;
    let (fwd_udp, fwd_tcp, missing) = tokio::task::spawn_blocking(move || {
        (
            dig(p, "example.org", "A", false),
            dig(p, "example.org", "A", true),
            dig_status(p, "nothing.example.org"),
        )
    })
    .await
    .expect("dig");
    if let (Some(u), Some(t)) = (fwd_udp, fwd_tcp) {
        assert_eq!(u, "192.0.2.7");
        assert_eq!(t, "192.0.2.7");
        assert_eq!(missing.as_deref(), Some("NXDOMAIN"));
    }
    assert!(
        upstream.asked().iter().any(|n| n == "example.org"),
        "forwarded upstream"
    );

    // A new table replaces the old one.
    ads.set(
        NAME_TABLE_TYPE,
        vec![(
            NAME_TABLE_RESOURCE.to_string(),
            envoy_types::util::pack_any(table(&[(REMOTE, &[REMOTE_SET], "127.0.0.9")])),
        )],
    );
    assert_eq!(wait_answer(proxy, REMOTE, "127.0.0.9").await, "127.0.0.9");
    gw.shutdown().await;
}
