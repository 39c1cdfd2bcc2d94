//! One simulated sidecar: a delta ADS stream that subscribes the way Envoy
//! does (CDS and LDS as wildcards, then EDS for every EDS cluster and RDS
//! for every route name it finds) and ACKs every response, reporting to
//! the benchmark what it saw and when.

use std::collections::BTreeSet;
use std::time::Instant;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

#[derive(Debug)]
pub enum Event {
    /// CDS and LDS ACKed, and every EDS and RDS resource they name received.
    Synced {
        proxy: usize,
        at: Instant,
        clusters: usize,
    },
    /// The endpoints of the watched EDS cluster, each time they arrive.
    Endpoints {
        proxy: usize,
        at: Instant,
        addresses: Vec<String>,
    },
    /// Clusters added or changed by a CDS response after the sync.
    Clusters {
        proxy: usize,
        at: Instant,
        names: Vec<String>,
    },
    Failed {
        proxy: usize,
        error: String,
    },
}

pub struct SimProxy {
    pub index: usize,
    pub cluster_id: String,
    pub ip: String,
    /// The EDS resource whose endpoint changes are timed.
    pub watch: String,
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(value::Kind::StringValue(s.to_string())),
    }
}

impl SimProxy {
    fn node(&self) -> Node {
        let pod = format!("sim-{}", self.index);
        let mut meta = Struct::default();
        for (k, v) in [
            ("CLUSTER_ID", self.cluster_id.as_str()),
            ("NAMESPACE", "default"),
            ("SERVICE_ACCOUNT", "default"),
            ("ISTHMUS_ROLE", "sidecar"),
            ("INTERCEPTION_MODE", "NONE"),
        ] {
            meta.fields.insert(k.to_string(), string(v));
        }
        Node {
            id: format!(
                "sidecar~{}~{pod}.default~default.svc.cluster.local",
                self.ip
            ),
            cluster: self.cluster_id.clone(),
            metadata: Some(meta),
            ..Default::default()
        }
    }

    /// Runs until the control plane closes the stream or the benchmark
    /// drops the receiver of `events`.
    pub async fn run(
        self,
        endpoint: tonic::transport::Endpoint,
        events: mpsc::UnboundedSender<Event>,
    ) {
        if let Err(error) = self.stream(endpoint, &events).await {
            let _ = events.send(Event::Failed {
                proxy: self.index,
                error,
            });
        }
    }

    async fn stream(
        &self,
        endpoint: tonic::transport::Endpoint,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<(), String> {
        // 1,000 proxies dial at once on two shared cores: the accept queue
        // may overflow, so retry the dial as Envoy does (with backoff).
        let mut attempt = 0;
        let channel = loop {
            match endpoint.connect().await {
                Ok(c) => break c,
                Err(e) if attempt >= 5 => return Err(format!("connecting: {e}")),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
                }
            }
        };
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        let node = self.node();
        let send = |req: DeltaDiscoveryRequest| tx.send(req).map_err(|e| e.to_string());
        for type_url in [CDS, LDS] {
            send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url.to_string(),
                ..Default::default()
            })?;
        }
        let mut responses = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();

        let mut state = Progress::default();
        while let Some(r) = responses.message().await.map_err(|e| e.to_string())? {
            let at = Instant::now();
            // ACK first, as Envoy does once it applied the update.
            send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })?;
            let subscribe = self.observe(&r, at, &mut state, events)?;
            if let Some((type_url, names)) = subscribe {
                send(DeltaDiscoveryRequest {
                    type_url: type_url.to_string(),
                    resource_names_subscribe: names,
                    ..Default::default()
                })?;
            }
            if !state.synced && state.complete() {
                state.synced = true;
                let _ = events.send(Event::Synced {
                    proxy: self.index,
                    at,
                    clusters: state.eds_wanted.len(),
                });
            }
        }
        Err("the control plane closed the stream".into())
    }

    /// Records a response; returns new names to subscribe to, if any.
    fn observe(
        &self,
        r: &DeltaDiscoveryResponse,
        at: Instant,
        state: &mut Progress,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<Option<(&'static str, Vec<String>)>, String> {
        let decode_err = |what: &str, e: prost::DecodeError| format!("{what}: {e}");
        match r.type_url.as_str() {
            CDS => {
                state.cds = true;
                let mut new = Vec::new();
                let mut names = Vec::new();
                for res in &r.resources {
                    let Some(any) = &res.resource else { continue };
                    let c = Cluster::decode(any.value.as_slice())
                        .map_err(|e| decode_err("Cluster", e))?;
                    names.push(c.name.clone());
                    if let Some(eds) = eds_name(&c) {
                        if state.eds_wanted.insert(eds.clone()) {
                            new.push(eds);
                        }
                    }
                }
                if state.synced {
                    let _ = events.send(Event::Clusters {
                        proxy: self.index,
                        at,
                        names,
                    });
                }
                Ok((!new.is_empty()).then_some((EDS, new)))
            }
            LDS => {
                state.lds = true;
                let mut new = Vec::new();
                for res in &r.resources {
                    let Some(any) = &res.resource else { continue };
                    let l = Listener::decode(any.value.as_slice())
                        .map_err(|e| decode_err("Listener", e))?;
                    for name in route_names(&l) {
                        if state.rds_wanted.insert(name.clone()) {
                            new.push(name);
                        }
                    }
                }
                Ok((!new.is_empty()).then_some((RDS, new)))
            }
            EDS => {
                for res in &r.resources {
                    state.eds_got.insert(res.name.clone());
                    if res.name != self.watch {
                        continue;
                    }
                    let Some(any) = &res.resource else { continue };
                    let cla = ClusterLoadAssignment::decode(any.value.as_slice())
                        .map_err(|e| decode_err("ClusterLoadAssignment", e))?;
                    let _ = events.send(Event::Endpoints {
                        proxy: self.index,
                        at,
                        addresses: addresses(&cla),
                    });
                }
                Ok(None)
            }
            RDS => {
                for res in &r.resources {
                    state.rds_got.insert(res.name.clone());
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

#[derive(Default)]
struct Progress {
    cds: bool,
    lds: bool,
    eds_wanted: BTreeSet<String>,
    eds_got: BTreeSet<String>,
    rds_wanted: BTreeSet<String>,
    rds_got: BTreeSet<String>,
    synced: bool,
}

impl Progress {
    fn complete(&self) -> bool {
        self.cds
            && self.lds
            && self.eds_wanted.is_subset(&self.eds_got)
            && self.rds_wanted.is_subset(&self.rds_got)
    }
}

fn eds_name(c: &Cluster) -> Option<String> {
    let is_eds = matches!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
    );
    if !is_eds {
        return None;
    }
    Some(
        c.eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| c.name.clone()),
    )
}

fn route_names(l: &Listener) -> Vec<String> {
    let mut out = Vec::new();
    for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            if any.type_url != HCM {
                continue;
            }
            let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                out.push(rds.route_config_name);
            }
        }
    }
    out
}

fn addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
    let mut out = Vec::new();
    for group in &cla.endpoints {
        for e in &group.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                continue;
            };
            if let Some(address::Address::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            {
                out.push(sa.address.clone());
            }
        }
    }
    out
}
