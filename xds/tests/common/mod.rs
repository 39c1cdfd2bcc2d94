//! Test harness: a real tonic server on 127.0.0.1:0 over a mutable model,
//! and ADS clients built on the generated tonic clients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use envoy_types::util::pack_any;
use isthmus_xds::{
    DebounceConfig, GenerateError, Generator, Names, Proxy, PushScope, Pusher, Resource, TypeUrl,
    XdsConfig, XdsServer,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::Streaming;

pub const WAIT: Duration = Duration::from_secs(10);

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The control plane's input, as the tests change it.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// name → revision; every cluster also has endpoints.
    pub clusters: BTreeMap<String, u32>,
    pub endpoints: BTreeMap<String, u32>,
    pub listeners: BTreeMap<String, u32>,
    pub routes: BTreeMap<String, u32>,
    /// Bytes of padding per cluster, to make responses big.
    pub pad: usize,
    pub fail: bool,
}

impl Model {
    pub fn basic() -> Model {
        let mut m = Model::default();
        for c in ["c1", "c2", "c3"] {
            m.clusters.insert(c.into(), 1);
            m.endpoints.insert(c.into(), 1);
        }
        m.listeners.insert("l1".into(), 1);
        m.routes.insert("r1".into(), 1);
        m
    }
}

#[derive(Default)]
pub struct TestGenerator {
    pub model: Mutex<Model>,
    pub calls: Mutex<BTreeMap<TypeUrl, usize>>,
    /// Offer a per-type shape that leaves the proxy's addresses out of EDS.
    pub eds_ignores_address: std::sync::atomic::AtomicBool,
}

impl TestGenerator {
    pub fn new(model: Model) -> Arc<TestGenerator> {
        Arc::new(TestGenerator {
            model: Mutex::new(model),
            calls: Mutex::default(),
            eds_ignores_address: Default::default(),
        })
    }

    pub fn update(&self, f: impl FnOnce(&mut Model)) {
        f(&mut self.model.lock().unwrap());
    }

    pub fn calls(&self, t: TypeUrl) -> usize {
        self.calls.lock().unwrap().get(&t).copied().unwrap_or(0)
    }
}

impl Generator for TestGenerator {
    fn shape_for(&self, proxy: &Proxy, t: TypeUrl) -> u64 {
        let coarse = self
            .eds_ignores_address
            .load(std::sync::atomic::Ordering::Relaxed);
        if coarse && t == TypeUrl::ClusterLoadAssignment {
            proxy.shape_key_except_address()
        } else {
            proxy.shape_key()
        }
    }

    fn generate(
        &self,
        _proxy: &Proxy,
        t: TypeUrl,
        names: &Names,
    ) -> Result<Vec<Resource>, GenerateError> {
        *self.calls.lock().unwrap().entry(t).or_default() += 1;
        let m = self.model.lock().unwrap().clone();
        if m.fail {
            return Err(GenerateError::new("model is broken on purpose"));
        }
        let pick = |map: &BTreeMap<String, u32>| -> Vec<(String, u32)> {
            map.iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(n, r)| (n.clone(), *r))
                .collect()
        };
        Ok(match t {
            TypeUrl::Cluster => pick(&m.clusters)
                .into_iter()
                .map(|(n, r)| {
                    let c = Cluster {
                        name: n.clone(),
                        alt_stat_name: format!("{n}:{r}:{}", "x".repeat(m.pad)),
                        ..Default::default()
                    };
                    Resource::new(n, pack_any(c))
                })
                .collect(),
            TypeUrl::ClusterLoadAssignment => pick(&m.endpoints)
                .into_iter()
                .map(|(n, r)| {
                    let c = ClusterLoadAssignment {
                        cluster_name: n.clone(),
                        endpoints: vec![LocalityLbEndpoints {
                            priority: r,
                            ..Default::default()
                        }],
                        ..Default::default()
                    };
                    Resource::new(n, pack_any(c))
                })
                .collect(),
            TypeUrl::Listener => pick(&m.listeners)
                .into_iter()
                .map(|(n, r)| {
                    let l = Listener {
                        name: n.clone(),
                        stat_prefix: r.to_string(),
                        ..Default::default()
                    };
                    Resource::new(n, pack_any(l))
                })
                .collect(),
            TypeUrl::RouteConfiguration => pick(&m.routes)
                .into_iter()
                .map(|(n, r)| {
                    let rc = RouteConfiguration {
                        name: n.clone(),
                        internal_only_headers: vec![r.to_string()],
                        ..Default::default()
                    };
                    Resource::new(n, pack_any(rc))
                })
                .collect(),
            TypeUrl::Secret | TypeUrl::NameTable => Vec::new(),
        })
    }
}

/// A running server; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub xds: XdsServer,
    pub pusher: Pusher,
    pub registry: prometheus::Registry,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn fast_config() -> XdsConfig {
    XdsConfig {
        debounce: DebounceConfig {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        },
        ..XdsConfig::default()
    }
}

pub async fn start(generator: Arc<TestGenerator>, config: XdsConfig) -> TestServer {
    let registry = prometheus::Registry::new();
    let (xds, pusher) = XdsServer::new(generator, config, &registry).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let router = tonic::transport::Server::builder()
        .add_service(xds.ads())
        .add_service(xds.cds())
        .add_service(xds.eds())
        .add_service(xds.lds())
        .add_service(xds.rds())
        .add_service(xds.sds());
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await;
    });
    TestServer {
        addr,
        xds,
        pusher,
        registry,
        shutdown: Some(tx),
    }
}

impl TestServer {
    pub fn push_full(&self, version: u64) {
        self.pusher.push(version, PushScope::Full);
    }

    pub fn push_endpoints(&self, version: u64, names: &[&str]) {
        self.pusher.push(
            version,
            PushScope::Endpoints(names.iter().map(|s| (*s).to_owned()).collect()),
        );
    }

    /// Value of a counter or gauge sample with the given label value (or none).
    pub fn metric(&self, name: &str, label: Option<&str>) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let metric = key.split('{').next().unwrap_or_default();
            if metric == name && label.is_none_or(|l| key.contains(&format!("\"{l}\""))) {
                return value.parse().unwrap();
            }
        }
        0.0
    }

    /// Waits until `f` holds for the server's status.
    pub async fn wait_status(&self, what: &str, f: impl Fn(&[isthmus_xds::ProxyStatus]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if f(&self.xds.status()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; status: {:#?}",
                serde_json::to_value(self.xds.status()).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        ..Default::default()
    }
}

pub fn sidecar(pod: &str) -> Node {
    node(&format!(
        "sidecar~10.0.0.1~{pod}.default~default.svc.cluster.local"
    ))
}

pub async fn ads_client(addr: SocketAddr) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(256 << 20)
}

/// A state-of-the-world ADS stream.
pub struct SotwClient {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
    pub node: Node,
    /// Last response per type: (version, nonce).
    pub last: BTreeMap<String, (String, String)>,
}

impl SotwClient {
    pub async fn connect(
        addr: SocketAddr,
        node: Node,
        first: DiscoveryRequest,
    ) -> Result<SotwClient, tonic::Status> {
        let mut client = ads_client(addr).await;
        let (tx, rx) = mpsc::channel(16);
        let mut first = first;
        first.node = Some(node.clone());
        tx.send(first).await.unwrap();
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(SotwClient {
            tx,
            rx,
            node,
            last: BTreeMap::new(),
        })
    }

    pub async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        let r = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a response")
            .expect("stream failed")
            .expect("stream ended");
        self.last.insert(
            r.type_url.clone(),
            (r.version_info.clone(), r.nonce.clone()),
        );
        r
    }

    /// ACKs the last response of `type_url`, keeping `names` subscribed.
    pub async fn ack(&self, type_url: &str, names: &[&str]) {
        let (version, nonce) = self.last[type_url].clone();
        self.send(req(type_url, names, &version, &nonce)).await;
    }

    /// NACKs the last response of `type_url`: reports the version it keeps.
    pub async fn nack(&self, type_url: &str, names: &[&str], kept_version: &str, message: &str) {
        let (_, nonce) = self.last[type_url].clone();
        let mut r = req(type_url, names, kept_version, &nonce);
        r.error_detail = Some(RpcStatus {
            code: 3,
            message: message.to_owned(),
            details: Vec::new(),
        });
        self.send(r).await;
    }
}

pub fn req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        version_info: version.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

/// A delta ADS stream.
pub struct DeltaClient {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    pub async fn connect(
        addr: SocketAddr,
        node: Node,
        mut first: DeltaDiscoveryRequest,
    ) -> DeltaClient {
        let mut client = ads_client(addr).await;
        let (tx, rx) = mpsc::channel(16);
        first.node = Some(node);
        tx.send(first).await.unwrap();
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        DeltaClient { tx, rx }
    }

    pub async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a delta response")
            .expect("stream failed")
            .expect("stream ended")
    }

    pub async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

pub fn delta_sub(type_url: &str, sub: &[&str], unsub: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_owned(),
        resource_names_subscribe: sub.iter().map(|s| (*s).to_owned()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

pub fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

pub fn cluster_revs(r: &DiscoveryResponse) -> Vec<(String, String)> {
    r.resources
        .iter()
        .map(|a| {
            let c = Cluster::decode(a.value.as_slice()).unwrap();
            let rev = c
                .alt_stat_name
                .split(':')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            (c.name, rev)
        })
        .collect()
}

pub fn cla(r: &DiscoveryResponse) -> Vec<(String, u32)> {
    r.resources
        .iter()
        .map(|a| {
            let c = ClusterLoadAssignment::decode(a.value.as_slice()).unwrap();
            (c.cluster_name, c.endpoints[0].priority)
        })
        .collect()
}

pub fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}

pub static NEXT_VERSION: AtomicUsize = AtomicUsize::new(1);

pub fn next_version() -> u64 {
    NEXT_VERSION.fetch_add(1, Ordering::Relaxed) as u64
}
