//! A DNS server on a free loopback port with a test zone, and small raw
//! clients built on hickory-proto (for what the stock client does not send:
//! ECS, no EDNS, garbage).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use isthmus_dns::{
    ClusterHealth, DnsMetrics, DnsServer, DnsServerConfig, HealthView, HostnameSpec,
    NameServerSpec, Policy, Serving, Zone, ZoneSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

pub const ZONE: &str = "global.isthmus.test";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn zone_spec() -> ZoneSpec {
    let h = |name: &str, policy: Policy| HostnameSpec {
        name: format!("{name}.{ZONE}"),
        policy,
        ttl: None,
    };
    ZoneSpec {
        origin: ZONE.into(),
        ttl: 30,
        nameservers: vec![NameServerSpec {
            name: format!("ns1.{ZONE}"),
            addresses: vec![ip("127.0.0.1")],
        }],
        admin: "hostmaster.isthmus.test".into(),
        serial: 42,
        hostnames: vec![
            h(
                "shop",
                Policy::Failover(vec!["us-east".into(), "eu-central".into()]),
            ),
            h("rr", Policy::RoundRobin),
            h(
                "geo",
                Policy::Geo {
                    fallback: vec!["us-east".into()],
                },
            ),
            h("big", Policy::Failover(vec!["big".into()])),
        ],
        regions: vec![
            ("10.1.0.0/16".into(), "us-east".into()),
            ("10.2.0.0/16".into(), "eu-central".into()),
        ],
    }
}

pub fn view() -> HealthView {
    // 80 addresses (1,280 bytes of A records): more than 512 and more than
    // the 1232-byte EDNS cap.
    let big: Vec<IpAddr> = (0..80u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();
    HealthView {
        clusters: BTreeMap::from([
            (
                "us-east".into(),
                ClusterHealth {
                    region: "us-east".into(),
                    lease_alive: true,
                    ingress: vec![ip("198.51.100.1")],
                },
            ),
            (
                "eu-central".into(),
                ClusterHealth {
                    region: "eu-central".into(),
                    lease_alive: true,
                    ingress: vec![ip("198.51.100.2"), ip("2001:db8::2")],
                },
            ),
            (
                "big".into(),
                ClusterHealth {
                    region: "big".into(),
                    lease_alive: true,
                    ingress: big,
                },
            ),
        ]),
        stale: false,
    }
}

pub struct TestServer {
    pub server: Option<DnsServer>,
    pub addr: SocketAddr,
    pub tx: watch::Sender<Arc<Serving>>,
    pub registry: prometheus::Registry,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let zone = Arc::new(Zone::build(&zone_spec()).unwrap());
        let (tx, rx) = watch::channel(Arc::new(Serving {
            zone,
            view: Arc::new(view()),
        }));
        let registry = prometheus::Registry::new();
        let metrics = DnsMetrics::new(&registry).unwrap();
        let server = DnsServer::start(
            &DnsServerConfig::new(vec!["127.0.0.1:0".parse().unwrap()]),
            rx,
            metrics,
        )
        .await
        .unwrap();
        let addr = server.local_addrs()[0];
        TestServer {
            server: Some(server),
            addr,
            tx,
            registry,
        }
    }

    pub fn set_view(&self, view: HealthView) {
        let zone = self.tx.borrow().zone.clone();
        self.tx.send_replace(Arc::new(Serving {
            zone,
            view: Arc::new(view),
        }));
    }

    /// Sum of a counter over the series whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut total = 0.0;
        for mf in self.registry.gather() {
            if mf.name() != name {
                continue;
            }
            for m in mf.get_metric() {
                let ok = labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                });
                if ok {
                    total += m.get_counter().get_value();
                }
            }
        }
        total as u64
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A query message; `edns` is the advertised buffer size, `subnet` an ECS option.
pub fn query(qname: &str, t: RecordType, edns: Option<u16>, subnet: Option<&str>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name(qname), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        if let Some(s) = subnet {
            let cs: ClientSubnet = s.parse().unwrap();
            e.options_mut().insert(EdnsOption::Subnet(cs));
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

pub const WAIT: Duration = Duration::from_secs(3);

pub async fn udp_raw(addr: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(packet, addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, s.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

pub async fn udp(addr: SocketAddr, packet: &[u8]) -> Message {
    let raw = udp_raw(addr, packet, WAIT).await.expect("no UDP response");
    Message::from_vec(&raw).unwrap()
}

pub async fn tcp(addr: SocketAddr, packet: &[u8]) -> Message {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    s.write_all(&framed).await.unwrap();
    let len = tokio::time::timeout(WAIT, s.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

pub fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// `dig`, from Debian's dnsutils. CI installs it; without it the test
/// fails, unless ISTHMUS_ALLOW_SKIP=1.
pub fn dig_available() -> bool {
    let ok = std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPING: `dig` is not installed (apt-get install dnsutils)");
            return false;
        }
        panic!("`dig` is not installed: apt-get install dnsutils (or set ISTHMUS_ALLOW_SKIP=1)");
    }
    true
}

pub async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+tries=1", "+time=3"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
