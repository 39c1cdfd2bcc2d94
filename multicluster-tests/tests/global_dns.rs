//! Global DNS over three real clusters: every control plane serves the zone
//! from its own registry replica. Answers follow each hostname's policy,
//! agree across the three name servers, lose a killed cluster within one
//! lease expiry and regain it when it comes back; ECS picks the region; a
//! control plane cut off from the registry majority keeps answering and
//! says its answers are stale; `isthmus status` shows the answers per region.
//!
//! Ingress gateways are stood in by TCP listeners on each cluster's ingress
//! address (what the control plane's readiness probe connects to).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use isthmus_multicluster_tests::admin;
use isthmus_multicluster_tests::wait;
use isthmus_multicluster_tests::{ClusterSpec, Federation, FederationSpec, READY_LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const ZONE: &str = "global.isthmus.test";
const DNS_PORT: u16 = 5353;
const CLUSTERS: [(&str, &str); 3] = [
    ("us-east", "us-east"),
    ("us-west", "us-west"),
    ("eu-central", "eu-central"),
];

fn spec() -> FederationSpec {
    let mut spec = FederationSpec::new(
        CLUSTERS
            .iter()
            .map(|(name, region)| ClusterSpec::new(name, region, &format!("{region}-1a")))
            .collect(),
    );
    // Real partitions (the control plane keeps running) for the stale check.
    spec.federation_links = true;
    if let Ok(filter) = std::env::var("ISTHMUS_TEST_LOG") {
        spec.log_filter = filter;
    }
    spec
}

fn dns_addr(fed: &Federation, cluster: &str) -> SocketAddr {
    SocketAddr::new(fed.cluster(cluster).unwrap().block.control_ip(), DNS_PORT)
}

fn ingress_ip(fed: &Federation, cluster: &str) -> String {
    fed.cluster(cluster).unwrap().block.ingress_ip().to_string()
}

/// The `dns` section every cluster gets (the same zone, name servers and
/// region table everywhere; only the listen address differs).
fn dns_section(fed: &Federation, me: &str) -> String {
    let mut s = format!(
        "  dns:\n    listen: [\"{}\"]\n    zone: {ZONE}\n    ttl: 5s\n    nameservers:\n",
        dns_addr(fed, me)
    );
    for (c, _) in CLUSTERS {
        s.push_str(&format!(
            "    - {{name: ns-{c}.{ZONE}, addresses: [{}]}}\n",
            dns_addr(fed, c).ip()
        ));
    }
    s.push_str(
        "    regions:\n    - {cidr: 10.1.0.0/16, region: us-east}\n    - {cidr: 10.2.0.0/16, region: eu-central}\n",
    );
    s.push_str("    ingressProbe: {interval: 300ms, timeout: 200ms}\n");
    s
}

fn gateway(name: &str, annotations: &[(&str, &str)]) -> String {
    let mut a = String::from("    isthmus.io/global: \"true\"\n");
    for (k, v) in annotations {
        a.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: {name}
  namespace: default
  annotations:
{a}spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8080, name: http, protocol: HTTP}}
    hosts: [\"{name}.{ZONE}\"]
"
    )
}

fn gateways() -> String {
    [
        gateway(
            "shop",
            &[
                ("isthmus.io/dns-policy", "failover"),
                ("isthmus.io/dns-failover", "us-east,eu-central,us-west"),
            ],
        ),
        gateway("rr", &[("isthmus.io/dns-policy", "round-robin")]),
        gateway(
            "geo",
            &[
                ("isthmus.io/dns-policy", "geo"),
                ("isthmus.io/dns-failover", "us-west"),
            ],
        ),
    ]
    .join("---\n")
}

fn query(qname: &str, t: RecordType, subnet: Option<&str>) -> Vec<u8> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(qname).unwrap(), t));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    if let Some(s) = subnet {
        let cs: ClientSubnet = s.parse().unwrap();
        e.options_mut().insert(EdnsOption::Subnet(cs));
    }
    m.set_edns(e);
    m.to_vec().unwrap()
}

fn rand_id() -> u16 {
    std::process::id() as u16
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0) as u16)
}

fn addresses(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// One UDP query (our own hickory-proto message, for ECS).
async fn ask_udp(server: SocketAddr, qname: &str, subnet: Option<&str>) -> Result<Message, String> {
    let s = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    s.send_to(&query(qname, RecordType::A, subnet), server)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_millis(800), s.recv_from(&mut buf))
        .await
        .map_err(|_| format!("no answer from {server}"))?
        .map_err(|e| e.to_string())?;
    Message::from_vec(&buf[..n]).map_err(|e| e.to_string())
}

async fn ask_tcp(server: SocketAddr, qname: &str, subnet: Option<&str>) -> Result<Message, String> {
    let mut s = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(server))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let q = query(qname, RecordType::A, subnet);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).await.map_err(|e| e.to_string())?;
    let read = async {
        let len = s.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(1), read)
        .await
        .map_err(|_| "read timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Message::from_vec(&buf).map_err(|e| e.to_string())
}

/// Until every listed server answers `qname` (with `subnet`) with exactly `want`.
async fn wait_answer(
    fed: &Federation,
    servers: &[&str],
    qname: &str,
    subnet: Option<&str>,
    want: &[String],
    limit: Duration,
) -> Duration {
    let start = tokio::time::Instant::now();
    let addrs: Vec<SocketAddr> = servers.iter().map(|c| dns_addr(fed, c)).collect();
    let what = format!("{servers:?} to answer {qname} ({subnet:?}) with {want:?}");
    let r = wait::until(&what, limit, || {
        let addrs = addrs.clone();
        async move {
            for a in &addrs {
                let m = ask_udp(*a, qname, subnet).await?;
                let got = addresses(&m);
                if got != want {
                    return Err(format!(
                        "{a} answered {got:?} ({:?})",
                        m.metadata.response_code
                    ));
                }
            }
            Ok(())
        }
    })
    .await;
    if let Err(t) = r {
        panic!("{t:?}\n{}", fed.log_tails(30));
    }
    start.elapsed()
}

/// Stand-in ingress gateways: accept and drop.
async fn ingress_listener(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_answer_alike_follow_policy_and_health() {
    let mut fed = Federation::start_for_tests(spec()).await.unwrap();
    fed.wait_ready(READY_LIMIT).await.unwrap();
    let names: Vec<&str> = CLUSTERS.iter().map(|(c, _)| *c).collect();

    let mut ingress = std::collections::BTreeMap::new();
    for c in &names {
        let a = fed.cluster(c).unwrap().block.ingress();
        ingress.insert(c.to_string(), ingress_listener(a).await);
    }
    for c in &names {
        let mesh_path = fed.cluster(c).unwrap().config_dir.join("mesh.yaml");
        let mesh = std::fs::read_to_string(&mesh_path).unwrap();
        fed.write_config(c, "mesh.yaml", &format!("{mesh}{}", dns_section(&fed, c)))
            .unwrap();
        fed.write_config(c, "global-gateways.yaml", &gateways())
            .unwrap();
    }
    let east = vec![ingress_ip(&fed, "us-east")];
    let eu = vec![ingress_ip(&fed, "eu-central")];
    let west = vec![ingress_ip(&fed, "us-west")];
    let shop = format!("shop.{ZONE}.");
    let geo = format!("geo.{ZONE}.");

    // Failover: us-east first, from all three name servers alike.
    wait_answer(&fed, &names, &shop, None, &east, Duration::from_secs(20)).await;

    // Over TCP too, and with hickory's stock client on both transports.
    let m = ask_tcp(dns_addr(&fed, "eu-central"), &shop, None)
        .await
        .unwrap();
    assert_eq!(addresses(&m), east);
    let conn = UdpClientStream::builder(dns_addr(&fed, "us-west"), TokioRuntimeProvider::default())
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    let bg = tokio::spawn(bg);
    let r = client
        .query(
            Name::from_ascii(&shop).unwrap(),
            DNSClass::IN,
            RecordType::A,
        )
        .await
        .unwrap();
    assert_eq!(addresses(&r), east);
    assert!(r.metadata.authoritative);
    bg.abort();
    let (stream, sender) = TcpClientStream::new(
        dns_addr(&fed, "us-east"),
        None,
        None,
        TokioRuntimeProvider::new(),
    );
    let (mut client, bg) = Client::<TokioRuntimeProvider>::new(stream.await.unwrap(), sender);
    let bg = tokio::spawn(bg);
    let r = client
        .query(
            Name::from_ascii(format!("nope.{ZONE}.")).unwrap(),
            DNSClass::IN,
            RecordType::A,
        )
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    bg.abort();

    // dig (dnsutils) against a second server, UDP and TCP.
    if dig_available() {
        for t in ["+notcp", "+tcp"] {
            let out = dig(dns_addr(&fed, "us-west"), &[t, "+short", &shop, "A"]).await;
            assert_eq!(out.trim(), east[0], "dig {t}: {out}");
        }
        let out = dig(dns_addr(&fed, "us-west"), &["+short", ZONE, "NS"]).await;
        assert_eq!(out.lines().count(), 3, "{out}");
    }

    // Round robin: every cluster takes a turn.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let m = ask_udp(dns_addr(&fed, "us-east"), &format!("rr.{ZONE}."), None)
            .await
            .unwrap();
        seen.extend(addresses(&m));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Geo by ECS: clients of the two configured regions, on every server.
    wait_answer(
        &fed,
        &names,
        &geo,
        Some("10.1.33.0/24"),
        &east,
        Duration::from_secs(5),
    )
    .await;
    wait_answer(
        &fed,
        &names,
        &geo,
        Some("10.2.33.0/24"),
        &eu,
        Duration::from_secs(5),
    )
    .await;
    // Outside the table: the fallback.
    wait_answer(
        &fed,
        &names,
        &geo,
        Some("192.0.2.0/24"),
        &west,
        Duration::from_secs(5),
    )
    .await;

    // Ingress readiness: eu-central's gateway stops accepting; geo clients
    // of eu-central go to the fallback, then come back.
    ingress.remove("eu-central").unwrap().abort();
    wait_answer(
        &fed,
        &names,
        &geo,
        Some("10.2.33.0/24"),
        &west,
        Duration::from_secs(10),
    )
    .await;
    let eu_ingress = fed.cluster("eu-central").unwrap().block.ingress();
    let relisten = wait::until(
        "eu-central's ingress port to be free",
        Duration::from_secs(5),
        || async {
            TcpListener::bind(eu_ingress)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap();
    ingress.insert(
        "eu-central".into(),
        tokio::spawn(async move {
            while let Ok((s, _)) = relisten.accept().await {
                drop(s);
            }
        }),
    );
    wait_answer(
        &fed,
        &names,
        &geo,
        Some("10.2.33.0/24"),
        &eu,
        Duration::from_secs(10),
    )
    .await;

    // Kill us-east (control plane and gateways) while its stand-in ingress
    // keeps accepting: the lease alone must take it out of every answer.
    let primary_was_leader =
        matches!(fed.raft_status("us-east").await, Ok((role, _)) if role == "Leader");
    fed.kill_cluster("us-east").await.unwrap();
    let survivors = ["us-west", "eu-central"];
    let took = wait_answer(&fed, &survivors, &shop, None, &eu, Duration::from_secs(20)).await;
    let election = if primary_was_leader { 2.0 } else { 0.0 };
    eprintln!(
        "us-east left the answers {took:?} after the kill (was leader: {primary_was_leader})"
    );
    // Lease TTL 3s, renewals every 1s, plus an election when the leader died.
    assert!(
        took.as_secs_f64() <= 3.0 + 1.0 + election + 1.5,
        "took {took:?}"
    );
    wait_answer(
        &fed,
        &survivors,
        &geo,
        Some("10.1.33.0/24"),
        &west,
        Duration::from_secs(5),
    )
    .await;

    // It comes back.
    fed.restart_cluster("us-east").await.unwrap();
    wait_answer(&fed, &names, &shop, None, &east, Duration::from_secs(30)).await;

    // Cut us-west off from the registry majority: it keeps answering from
    // its last view and reports the view stale.
    fed.cut_links("us-west", true).unwrap();
    let west_admin = fed.cluster("us-west").unwrap().block.control_admin();
    wait::until(
        "us-west to report a stale DNS view",
        Duration::from_secs(15),
        || async {
            let m = admin::metrics(west_admin)
                .await
                .map_err(|e| e.to_string())?;
            match admin::sum(&m, "isthmus_dns_view_stale", &[]) {
                v if v >= 1.0 => Ok(()),
                v => Err(format!("isthmus_dns_view_stale = {v}")),
            }
        },
    )
    .await
    .unwrap();
    let m = ask_udp(dns_addr(&fed, "us-west"), &shop, None)
        .await
        .unwrap();
    assert_eq!(addresses(&m), east);
    let metrics = admin::metrics(west_admin).await.unwrap();
    assert!(admin::sum(&metrics, "isthmus_dns_stale_answers_total", &[]) >= 1.0);
    assert!(
        admin::sum(
            &metrics,
            "isthmus_dns_answers_total",
            &[
                ("hostname", "shop.global.isthmus.test"),
                ("cluster", "us-east"),
                ("policy", "failover")
            ]
        ) >= 1.0
    );
    fed.cut_links("us-west", false).unwrap();

    // `isthmus status` shows what each region is answered.
    let out = tokio::process::Command::new(fed.binary())
        .args(["status", "--admin"])
        .arg(format!(
            "http://{}",
            fed.cluster("eu-central").unwrap().block.control_admin()
        ))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("GLOBAL DNS"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("geo.global.isthmus.test (geo)"), "{text}");
    let eu_line = text
        .lines()
        .skip_while(|l| !l.contains("geo.global.isthmus.test"))
        .find(|l| l.trim_start().starts_with("eu-central"))
        .unwrap_or_default();
    assert!(eu_line.contains(&eu[0]), "{text}");

    for (_, h) in ingress {
        h.abort();
    }
    fed.shutdown().await;
}

fn dig_available() -> bool {
    let ok = std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPING the dig checks: `dig` is not installed (apt-get install dnsutils)");
            return false;
        }
        panic!("`dig` is not installed: apt-get install dnsutils (or set ISTHMUS_ALLOW_SKIP=1)");
    }
    true
}

async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+tries=1", "+time=2"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
