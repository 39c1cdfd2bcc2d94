//! The benchmark's Isthmus side: the global DNS server on one core
//! (current-thread runtime, one UDP worker) serving `bench.test` with one
//! failover hostname, `www.bench.test` -> 192.0.2.1, the same answer as the
//! static zone nsd serves in `dns/bench/run.sh`.
//!
//! Usage: bench_server ADDR (e.g. 127.0.0.1:5301); runs until killed.

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_dns::{
    ClusterHealth, DnsMetrics, DnsServer, DnsServerConfig, HealthView, HostnameSpec,
    NameServerSpec, Policy, Serving, Zone, ZoneSpec,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5301".into())
        .parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let zone = Zone::build(&ZoneSpec {
            origin: "bench.test".into(),
            ttl: 30,
            nameservers: vec![NameServerSpec {
                name: "ns1.bench.test".into(),
                addresses: vec!["127.0.0.1".parse()?],
            }],
            admin: "hostmaster.bench.test".into(),
            serial: 1,
            hostnames: vec![HostnameSpec {
                name: "www.bench.test".into(),
                policy: Policy::Failover(vec!["a".into(), "b".into()]),
                ttl: None,
            }],
            regions: Vec::new(),
        })?;
        let view = HealthView {
            clusters: BTreeMap::from([
                (
                    "a".to_string(),
                    ClusterHealth {
                        region: "r1".into(),
                        lease_alive: true,
                        ingress: vec!["192.0.2.1".parse()?],
                    },
                ),
                (
                    "b".to_string(),
                    ClusterHealth {
                        region: "r2".into(),
                        lease_alive: true,
                        ingress: vec!["192.0.2.2".parse()?],
                    },
                ),
            ]),
            stale: false,
        };
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Serving {
            zone: Arc::new(zone),
            view: Arc::new(view),
        }));
        let registry = prometheus::Registry::new();
        let mut cfg = DnsServerConfig::new(vec![addr]);
        cfg.udp_workers = 1;
        let server = DnsServer::start(&cfg, rx, DnsMetrics::new(&registry)?).await?;
        eprintln!("serving on {:?}", server.local_addrs());
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
