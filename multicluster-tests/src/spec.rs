//! What a federation under test looks like: clusters, their services and
//! workloads, and where on loopback each process lives.
//!
//! Cluster blocks are `127.N.0.0/16`, one second octet per cluster:
//! control plane `127.N.0.1`, east-west gateway `127.N.0.2`, ingress
//! `127.N.0.3`; workload `k` (1-based) has its "pod IP" `127.N.1.k` (sidecar
//! inbound and admin), its application on `127.N.2.k` and its sidecar's
//! outbound listeners on `127.N.3.k`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const GRPC_PORT: u16 = 15012;
pub const PLAINTEXT_XDS_PORT: u16 = 15010;
pub const CONTROL_ADMIN_PORT: u16 = 15014;
pub const FEDERATION_PORT: u16 = 15031;
pub const EASTWEST_PORT: u16 = 15443;
pub const PROXY_ADMIN_PORT: u16 = 15000;
pub const INGRESS_PORT: u16 = 8080;

/// The loopback block of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub octet: u8,
}

impl Block {
    fn ip(&self, third: u8, fourth: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.octet, third, fourth))
    }
    pub fn control_ip(&self) -> IpAddr {
        self.ip(0, 1)
    }
    pub fn eastwest_ip(&self) -> IpAddr {
        self.ip(0, 2)
    }
    pub fn ingress_ip(&self) -> IpAddr {
        self.ip(0, 3)
    }
    /// A spare address in the cluster's block for helpers such as the WAN
    /// fault proxy in front of the east-west gateway.
    pub fn spare_ip(&self, n: u8) -> IpAddr {
        self.ip(0, 10 + n)
    }
    pub fn workload_ip(&self, k: u8) -> IpAddr {
        self.ip(1, k)
    }
    pub fn app_ip(&self, k: u8) -> IpAddr {
        self.ip(2, k)
    }
    pub fn outbound_ip(&self, k: u8) -> IpAddr {
        self.ip(3, k)
    }
    pub fn grpc(&self) -> SocketAddr {
        SocketAddr::new(self.control_ip(), GRPC_PORT)
    }
    pub fn plaintext_xds(&self) -> SocketAddr {
        SocketAddr::new(self.control_ip(), PLAINTEXT_XDS_PORT)
    }
    pub fn control_admin(&self) -> SocketAddr {
        SocketAddr::new(self.control_ip(), CONTROL_ADMIN_PORT)
    }
    pub fn federation(&self) -> SocketAddr {
        SocketAddr::new(self.control_ip(), FEDERATION_PORT)
    }
    pub fn eastwest(&self) -> SocketAddr {
        SocketAddr::new(self.eastwest_ip(), EASTWEST_PORT)
    }
    pub fn eastwest_admin(&self) -> SocketAddr {
        SocketAddr::new(self.eastwest_ip(), PROXY_ADMIN_PORT)
    }
    pub fn ingress(&self) -> SocketAddr {
        SocketAddr::new(self.ingress_ip(), INGRESS_PORT)
    }
    pub fn ingress_admin(&self) -> SocketAddr {
        SocketAddr::new(self.ingress_ip(), PROXY_ADMIN_PORT)
    }
    /// Where a federation witness started with the cluster listens.
    pub fn witness(&self) -> SocketAddr {
        SocketAddr::new(self.spare_ip(200), FEDERATION_PORT)
    }
    pub fn workload_admin(&self, k: u8) -> SocketAddr {
        SocketAddr::new(self.workload_ip(k), PROXY_ADMIN_PORT)
    }
}

/// A service defined in a cluster (a `ServiceEntry`, exported with a
/// `ServiceExport` when `export` is set).
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub port: u16,
    /// `TCP` or `HTTP`; empty for a port with no name and no protocol
    /// (sniffed).
    pub protocol: String,
    pub export: bool,
}

impl ServiceSpec {
    pub fn new(name: &str, port: u16) -> Self {
        ServiceSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            port,
            protocol: "TCP".to_string(),
            export: true,
        }
    }

    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// One instance of a service: an echo application and its sidecar.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Unique within the cluster, e.g. `reviews-v1`.
    pub name: String,
    /// The name of a [`ServiceSpec`] of the same cluster.
    pub service: String,
    pub version: String,
    pub service_account: String,
    /// Overrides the cluster's zone (same region).
    pub zone: Option<String>,
    /// The echo app calls this service (name, port) through its sidecar on
    /// every request and answers with what came back (see `echo`): a
    /// productpage in front of reviews.
    pub calls: Option<(String, u16)>,
}

impl WorkloadSpec {
    pub fn new(service: &str, version: &str) -> Self {
        WorkloadSpec {
            name: format!("{service}-{version}"),
            service: service.to_string(),
            version: version.to_string(),
            service_account: format!("bookinfo-{service}"),
            zone: None,
            calls: None,
        }
    }
}

/// Where a cluster's configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// Written by the harness from the spec (tests).
    Generate,
    /// Copied from this directory (the demo's `deploy/examples/<cluster>`);
    /// the spec's services and workloads must describe the same things.
    Directory(PathBuf),
    /// These files (name, content), written as they are (the demo's
    /// embedded copy of `deploy/examples/<cluster>`).
    Files(Vec<(String, String)>),
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub region: String,
    pub zone: String,
    pub network: String,
    pub services: Vec<ServiceSpec>,
    pub workloads: Vec<WorkloadSpec>,
    /// Extra YAML documents written next to the generated ones
    /// (DestinationRules, VirtualServices), as (file name, content).
    pub extra_config: Vec<(String, String)>,
    pub config: ConfigSource,
    /// Put a WAN fault proxy in front of this cluster's east-west gateway:
    /// the federation advertises the proxy's address instead.
    pub wan_proxy: bool,
    /// Extra MeshConfig `spec` keys, as YAML lines indented by two spaces
    /// (e.g. tracing and access-log settings).
    pub mesh_extra: String,
    /// Extra `isthmus gateway` arguments for every sidecar of this cluster
    /// (e.g. `--cert-lifetime 6s` in the root-rotation test).
    pub sidecar_args: Vec<String>,
    /// Run an ingress gateway on `Block::ingress_ip` (see `ingress`).
    pub ingress: bool,
    /// Serve the QUIC tunnel on the east-west gateway and reach every peer
    /// with `transport: quic` (see `tunnel`).
    pub tunnel: bool,
}

impl ClusterSpec {
    pub fn new(name: &str, region: &str, zone: &str) -> Self {
        ClusterSpec {
            name: name.to_string(),
            region: region.to_string(),
            zone: zone.to_string(),
            network: format!("net-{name}"),
            services: Vec::new(),
            workloads: Vec::new(),
            extra_config: Vec::new(),
            config: ConfigSource::Generate,
            wan_proxy: false,
            mesh_extra: String::new(),
            sidecar_args: Vec::new(),
            ingress: false,
            tunnel: false,
        }
    }

    pub fn service(mut self, s: ServiceSpec) -> Self {
        self.services.push(s);
        self
    }

    pub fn workload(mut self, w: WorkloadSpec) -> Self {
        self.workloads.push(w);
        self
    }

    pub fn config(mut self, file: &str, yaml: &str) -> Self {
        self.extra_config.push((file.to_string(), yaml.to_string()));
        self
    }

    /// 1-based index of a workload, which is also its address's last octet.
    pub fn workload_index(&self, name: &str) -> Option<u8> {
        self.workloads
            .iter()
            .position(|w| w.name == name)
            .and_then(|i| u8::try_from(i + 1).ok())
    }

    pub fn service_spec(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Timing of the control planes; defaults are the binary's.
#[derive(Debug, Clone)]
pub struct Timing {
    pub raft_tick: Duration,
    pub lease_renew: Duration,
    pub lease_ttl: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            raft_tick: Duration::from_millis(100),
            lease_renew: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FederationSpec {
    pub trust_domain: String,
    pub clusters: Vec<ClusterSpec>,
    pub timing: Timing,
    /// Second octets to use, one per cluster; `None` picks free blocks.
    pub blocks: Option<Vec<u8>>,
    /// Keep state here instead of a temporary directory (the demo).
    pub state_dir: Option<PathBuf>,
    /// `isthmus` log filter for every child.
    pub log_filter: String,
    /// Route every federation peer link (QUIC) through its own UDP fault
    /// proxy, so links can be cut: a real partition, with every process
    /// still running (see `Federation::cut_links`).
    pub federation_links: bool,
    /// Run `isthmus federation witness` under this name as an extra voter
    /// (see `witness`): two clusters plus a witness keep a quorum.
    pub witness: Option<String>,
}

impl FederationSpec {
    pub fn new(clusters: Vec<ClusterSpec>) -> Self {
        FederationSpec {
            trust_domain: "demo.isthmus.local".to_string(),
            clusters,
            timing: Timing::default(),
            blocks: None,
            state_dir: None,
            log_filter: "info".to_string(),
            federation_links: false,
            witness: None,
        }
    }

    /// The bookinfo-like topology of `deploy/examples`: productpage in
    /// us-west calls reviews, which runs (v1 and v2) in us-east and
    /// eu-central; us-west fails over to us-east first.
    /// The smallest cross-network pair: reviews v1 in us-east (net-east)
    /// called by productpage (not exported) in us-west (net-west).
    pub fn two_networks() -> Self {
        let mut productpage = ServiceSpec::new("productpage", 9090);
        productpage.export = false;
        let mut east = ClusterSpec::new("us-east", "us-east", "us-east-1a")
            .service(ServiceSpec::new("reviews", 9080))
            .workload(WorkloadSpec::new("reviews", "v1"));
        east.network = "net-east".to_string();
        let mut west = ClusterSpec::new("us-west", "us-west", "us-west-2a")
            .service(productpage)
            .workload(WorkloadSpec::new("productpage", "v1"));
        west.network = "net-west".to_string();
        FederationSpec::new(vec![east, west])
    }

    pub fn bookinfo() -> Self {
        let reviews = ServiceSpec::new("reviews", 9080);
        let ratings = ServiceSpec::new("ratings", 9081);
        let backend = |name: &str, region: &str, zone: &str, net: &str| {
            let mut c = ClusterSpec::new(name, region, zone)
                .service(reviews.clone())
                .service(ratings.clone())
                .workload(WorkloadSpec::new("reviews", "v1"))
                .workload(WorkloadSpec::new("reviews", "v2"))
                .workload(WorkloadSpec::new("ratings", "v1"));
            c.network = net.to_string();
            c
        };
        // productpage only calls out; like in deploy/examples it is not exported.
        let mut productpage = ServiceSpec::new("productpage", 9090);
        productpage.export = false;
        let mut west = ClusterSpec::new("us-west", "us-west", "us-west-2a")
            .service(productpage)
            .workload(WorkloadSpec::new("productpage", "v1"))
            .config("traffic.yaml", BOOKINFO_DESTINATION_RULE);
        west.network = "net-west".to_string();
        FederationSpec::new(vec![
            backend("us-east", "us-east", "us-east-1a", "net-east"),
            west,
            backend("eu-central", "eu-central", "eu-central-1a", "net-eu"),
        ])
    }
}

/// us-west prefers us-east, then anything else; subsets by version.
pub const BOOKINFO_DESTINATION_RULE: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        enabled: true
        failover:
        - from: us-west
          to: us-east
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 10s
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_addresses_follow_the_plan() {
        let b = Block { octet: 12 };
        assert_eq!(b.control_admin().to_string(), "127.12.0.1:15014");
        assert_eq!(b.eastwest().to_string(), "127.12.0.2:15443");
        assert_eq!(b.workload_admin(3).to_string(), "127.12.1.3:15000");
        assert_eq!(b.app_ip(2).to_string(), "127.12.2.2");
        assert_eq!(b.outbound_ip(1).to_string(), "127.12.3.1");
    }

    #[test]
    fn workload_index_is_one_based() {
        let f = FederationSpec::bookinfo();
        let east = &f.clusters[0];
        assert_eq!(east.workload_index("reviews-v1"), Some(1));
        assert_eq!(east.workload_index("ratings-v1"), Some(3));
        assert_eq!(east.workload_index("nope"), None);
        assert_eq!(east.service_spec("ratings").map(|s| s.port), Some(9081));
    }
}
