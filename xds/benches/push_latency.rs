//! Endpoint change → last ACK, with many services and connected proxies.
//!
//! `cargo bench -p isthmus-xds --bench push_latency` runs the full scale
//! (1,000 services × 10 endpoints, 1,000 proxies); `-- --test` (as CI runs
//! it) runs a tiny scale to keep the bench compiling and working. Scale can be
//! set with XDS_BENCH_SERVICES, XDS_BENCH_ENDPOINTS, XDS_BENCH_PROXIES,
//! XDS_BENCH_ROUNDS and XDS_BENCH_DEBOUNCE_MS. See benches/README.md.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Node, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::util::pack_any;
use isthmus_xds::{
    DebounceConfig, GenerateError, Generator, Names, Proxy, PushScope, Resource, TypeUrl,
    XdsConfig, XdsServer,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

struct Scale {
    services: usize,
    endpoints: usize,
    proxies: usize,
    rounds: usize,
    debounce: Duration,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cluster_name(i: usize) -> String {
    format!("outbound|9080||svc{i}.default.svc.cluster.local")
}

/// Resources kept pre-built, as a translator with an index would.
struct BenchGenerator {
    clusters: BTreeMap<String, Resource>,
    assignments: RwLock<BTreeMap<String, Resource>>,
    endpoints: usize,
}

fn assignment(name: &str, endpoints: usize, generation: u32) -> Resource {
    let lb_endpoints = (0..endpoints)
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: format!("10.{}.{}.{}", generation % 250, e / 250, e % 250),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(9080)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    Resource::new(
        name,
        pack_any(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
    )
}

impl BenchGenerator {
    fn new(services: usize, endpoints: usize) -> BenchGenerator {
        let names: Vec<String> = (0..services).map(cluster_name).collect();
        BenchGenerator {
            clusters: names
                .iter()
                .map(|n| {
                    let c = Cluster {
                        name: n.clone(),
                        ..Default::default()
                    };
                    (n.clone(), Resource::new(n, pack_any(c)))
                })
                .collect(),
            assignments: RwLock::new(
                names
                    .iter()
                    .map(|n| (n.clone(), assignment(n, endpoints, 0)))
                    .collect(),
            ),
            endpoints,
        }
    }

    fn change(&self, name: &str, generation: u32) {
        let r = assignment(name, self.endpoints, generation);
        self.assignments.write().unwrap().insert(name.to_owned(), r);
    }
}

impl Generator for BenchGenerator {
    fn generate(
        &self,
        _: &Proxy,
        t: TypeUrl,
        names: &Names,
    ) -> Result<Vec<Resource>, GenerateError> {
        let pick = |m: &BTreeMap<String, Resource>| match names {
            Names::All => m.values().cloned().collect(),
            Names::Some(set) => set.iter().filter_map(|n| m.get(&**n).cloned()).collect(),
        };
        Ok(match t {
            TypeUrl::Cluster => pick(&self.clusters),
            TypeUrl::ClusterLoadAssignment => pick(&self.assignments.read().unwrap()),
            _ => Vec::new(),
        })
    }

    /// Output depends on nothing per proxy here: one shape per namespace.
    fn shape(&self, proxy: &Proxy) -> u64 {
        proxy.namespace.len() as u64 ^ (proxy.namespace.bytes().map(u64::from).sum::<u64>() << 8)
    }
}

/// One simulated Envoy: CDS wildcard, then EDS for every cluster, ACKing all.
/// Reports the time of each EDS ACK after the initial sync.
async fn proxy(
    channel: tonic::transport::Channel,
    id: usize,
    services: usize,
    synced: mpsc::Sender<()>,
    acks: mpsc::UnboundedSender<Instant>,
) {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(1 << 30);
    let (tx, rx) = mpsc::channel(4);
    let node = Node {
        id: format!(
            "sidecar~10.1.{}.{}~p{id}.ns{}~ns{}.svc.cluster.local",
            id / 250,
            id % 250,
            id % 10,
            id % 10
        ),
        ..Default::default()
    };
    let mut first = DiscoveryRequest {
        type_url: CDS.into(),
        node: Some(node),
        ..Default::default()
    };
    first.resource_names.clear();
    tx.send(first).await.unwrap();
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let eds_names: Vec<String> = (0..services).map(cluster_name).collect();
    let mut initial_eds = true;
    while let Ok(Some(r)) = stream.message().await {
        let ack = DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: if r.type_url == EDS {
                eds_names.clone()
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
        if r.type_url == CDS && initial_eds {
            let eds = DiscoveryRequest {
                type_url: EDS.into(),
                resource_names: eds_names.clone(),
                ..Default::default()
            };
            if tx.send(eds).await.is_err() {
                return;
            }
        } else if r.type_url == EDS {
            if initial_eds {
                initial_eds = false;
                let _ = synced.send(()).await;
            } else {
                let _ = acks.send(Instant::now());
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let test_mode = std::env::args().any(|a| a == "--test");
    let scale = if test_mode {
        Scale {
            services: 20,
            endpoints: 2,
            proxies: 10,
            rounds: 2,
            debounce: Duration::from_millis(5),
        }
    } else {
        Scale {
            services: env("XDS_BENCH_SERVICES", 1000),
            endpoints: env("XDS_BENCH_ENDPOINTS", 10),
            proxies: env("XDS_BENCH_PROXIES", 1000),
            rounds: env("XDS_BENCH_ROUNDS", 20),
            debounce: Duration::from_millis(env("XDS_BENCH_DEBOUNCE_MS", 100) as u64),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(scale));
}

async fn run(scale: Scale) {
    let generator = Arc::new(BenchGenerator::new(scale.services, scale.endpoints));
    let config = XdsConfig {
        debounce: DebounceConfig {
            quiet: scale.debounce,
            max_delay: scale.debounce * 10,
        },
        response_queue: 8,
        ..XdsConfig::default()
    };
    let registry = prometheus::Registry::new();
    let (xds, pusher) = XdsServer::new(generator.clone(), config, &registry).unwrap();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(xds.ads())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let start = Instant::now();
    let (synced_tx, mut synced_rx) = mpsc::channel(scale.proxies);
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel();
    // Several streams per HTTP/2 connection keeps file descriptors in check.
    let channels = scale.proxies.div_ceil(10);
    let mut conns = Vec::new();
    for _ in 0..channels {
        conns.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    for id in 0..scale.proxies {
        tokio::spawn(proxy(
            conns[id % channels].clone(),
            id,
            scale.services,
            synced_tx.clone(),
            acks_tx.clone(),
        ));
    }
    for _ in 0..scale.proxies {
        synced_rx.recv().await.unwrap();
    }
    println!(
        "{} services x {} endpoints, {} proxies (SotW ADS, CDS wildcard + EDS for every cluster), debounce {:?}",
        scale.services, scale.endpoints, scale.proxies, scale.debounce
    );
    println!("initial sync of all proxies: {:?}", start.elapsed());

    let mut all = Vec::new();
    let mut lasts = Vec::new();
    for round in 0..scale.rounds {
        let name = cluster_name(round * 7 % scale.services);
        let t0 = Instant::now();
        generator.change(&name, round as u32 + 1);
        pusher.push(
            round as u64 + 1,
            PushScope::Endpoints([name].into_iter().collect()),
        );
        let mut round_lat = Vec::with_capacity(scale.proxies);
        for _ in 0..scale.proxies {
            let at = tokio::time::timeout(Duration::from_secs(60), acks_rx.recv())
                .await
                .expect("a proxy did not ACK the endpoint change within 60 s")
                .unwrap();
            round_lat.push(at - t0);
        }
        round_lat.sort();
        lasts.push(*round_lat.last().unwrap_or(&Duration::ZERO));
        all.extend(round_lat);
    }
    all.sort();
    lasts.sort();
    println!(
        "endpoint change -> ACK, over {} ACKs in {} rounds: p50 {:?}, p99 {:?}, max {:?}",
        all.len(),
        scale.rounds,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or_default()
    );
    println!(
        "endpoint change -> last ACK of the round: p50 {:?}, p99 {:?}",
        percentile(&lasts, 0.5),
        percentile(&lasts, 0.99)
    );
}
