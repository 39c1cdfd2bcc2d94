//! A small scripted ADS server (real tonic, port 0): tests set resources per
//! type, every stream gets what it subscribed to, and every request the
//! proxy sends (ACKs and NACKs) is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Default, Debug)]
pub struct Snapshot {
    /// type_url → (version, resources by name).
    pub types: HashMap<String, (u64, Vec<(String, Any)>)>,
}

#[derive(Clone)]
struct Svc {
    state: watch::Receiver<Snapshot>,
    requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
    delta_requests: Arc<Mutex<Vec<DeltaDiscoveryRequest>>>,
    /// Serve delta ADS (otherwise answer it with UNIMPLEMENTED).
    delta: bool,
    stop: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let mut state = self.state.clone();
        let requests = self.requests.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut subs: HashMap<String, Vec<String>> = HashMap::new();
            let mut sent: HashMap<String, u64> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                let mut to_send: Vec<String> = Vec::new();
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("scripted ADS server stopped"))).await;
                        return;
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            requests.lock().expect("lock").push(req.clone());
                            let changed = subs.get(&req.type_url) != Some(&req.resource_names);
                            subs.insert(req.type_url.clone(), req.resource_names.clone());
                            if changed || req.response_nonce.is_empty() {
                                sent.remove(&req.type_url);
                                to_send.push(req.type_url.clone());
                            }
                        }
                        _ => return,
                    },
                    r = state.changed() => {
                        if r.is_err() { return; }
                        to_send.extend(subs.keys().cloned());
                    }
                }
                let snap = state.borrow().clone();
                for t in to_send {
                    let Some((version, resources)) = snap.types.get(&t) else {
                        continue;
                    };
                    if sent.get(&t) == Some(version) {
                        continue;
                    }
                    let names = subs.get(&t).cloned().unwrap_or_default();
                    let resources: Vec<Any> = resources
                        .iter()
                        .filter(|(n, _)| names.is_empty() || names.contains(n))
                        .map(|(_, a)| a.clone())
                        .collect();
                    nonce += 1;
                    sent.insert(t.clone(), *version);
                    let resp = DiscoveryResponse {
                        version_info: version.to_string(),
                        resources,
                        type_url: t.clone(),
                        nonce: nonce.to_string(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if !self.delta {
            return Err(Status::unimplemented(
                "scripted server speaks state of the world only",
            ));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let mut state = self.state.clone();
        let requests = self.delta_requests.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            // type → subscribed names (None = wildcard).
            let mut subs: HashMap<String, Option<Vec<String>>> = HashMap::new();
            // type → name → version sent.
            let mut sent: HashMap<String, HashMap<String, u64>> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                let mut dirty: Vec<String> = Vec::new();
                tokio::select! {
                    _ = stop.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("scripted ADS server stopped"))).await;
                        return;
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            requests.lock().expect("lock").push(req.clone());
                            let t = req.type_url.clone();
                            let entry = subs.entry(t.clone()).or_insert_with(|| {
                                if req.resource_names_subscribe.is_empty() { None } else { Some(Vec::new()) }
                            });
                            if let Some(names) = entry {
                                names.extend(req.resource_names_subscribe.iter().cloned());
                                names.retain(|n| !req.resource_names_unsubscribe.contains(n));
                            }
                            if req.response_nonce.is_empty() || !req.resource_names_subscribe.is_empty() {
                                // Resources the client already has at this version are not resent.
                                let known = sent.entry(t.clone()).or_default();
                                for (n, v) in &req.initial_resource_versions {
                                    if let Ok(v) = v.parse() { known.insert(n.clone(), v); }
                                }
                                dirty.push(t);
                            }
                        }
                        _ => return,
                    },
                    r = state.changed() => {
                        if r.is_err() { return; }
                        dirty.extend(subs.keys().cloned());
                    }
                }
                let snap = state.borrow().clone();
                for t in dirty {
                    let Some((version, resources)) = snap.types.get(&t) else {
                        continue;
                    };
                    let want = subs.get(&t).cloned().flatten();
                    let visible: Vec<&(String, Any)> = resources
                        .iter()
                        .filter(|(n, _)| want.as_ref().is_none_or(|w| w.contains(n)))
                        .collect();
                    let known = sent.entry(t.clone()).or_default();
                    let changed: Vec<Resource> = visible
                        .iter()
                        .filter(|(n, _)| known.get(n) != Some(version))
                        .map(|(n, a)| Resource {
                            name: n.clone(),
                            version: version.to_string(),
                            resource: Some(a.clone()),
                            ..Default::default()
                        })
                        .collect();
                    let removed: Vec<String> = known
                        .keys()
                        .filter(|n| !visible.iter().any(|(v, _)| v == *n))
                        .cloned()
                        .collect();
                    if changed.is_empty() && removed.is_empty() {
                        continue;
                    }
                    for r in &changed {
                        known.insert(r.name.clone(), *version);
                    }
                    for n in &removed {
                        known.remove(n);
                    }
                    nonce += 1;
                    let resp = DeltaDiscoveryResponse {
                        system_version_info: version.to_string(),
                        resources: changed,
                        type_url: t.clone(),
                        removed_resources: removed,
                        nonce: nonce.to_string(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub struct ScriptedAds {
    pub addr: SocketAddr,
    state: watch::Sender<Snapshot>,
    requests: Arc<Mutex<Vec<DiscoveryRequest>>>,
    delta_requests: Arc<Mutex<Vec<DeltaDiscoveryRequest>>>,
    stop: CancellationToken,
}

impl ScriptedAds {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, false).await
    }

    /// A delta-speaking server on a given address (a control plane coming back).
    pub async fn start_delta_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, true).await
    }

    /// A server that also speaks delta ADS.
    pub async fn start_delta() -> Self {
        Self::start_with("127.0.0.1:0".parse().expect("addr"), true).await
    }

    async fn start_with(addr: SocketAddr, delta: bool) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind ADS");
        let addr = listener.local_addr().expect("addr");
        let (state, rx) = watch::channel(Snapshot::default());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let delta_requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let svc = Svc {
            state: rx,
            requests: requests.clone(),
            delta_requests: delta_requests.clone(),
            delta,
            stop: stop.clone(),
        };
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.cancelled_owned(),
                )
                .await;
        });
        Self {
            addr,
            state,
            requests,
            delta_requests,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the resources of one type and bumps its version.
    pub fn set(&self, type_url: &str, resources: Vec<(String, Any)>) {
        self.state.send_modify(|s| {
            let v = s.types.get(type_url).map_or(1, |(v, _)| v + 1);
            s.types.insert(type_url.to_string(), (v, resources));
        });
    }

    pub fn version(&self, type_url: &str) -> u64 {
        self.state
            .borrow()
            .types
            .get(type_url)
            .map_or(0, |(v, _)| *v)
    }

    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.requests.lock().expect("lock").clone()
    }

    pub fn delta_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.delta_requests.lock().expect("lock").clone()
    }

    /// Waits for a delta request matching `pred`.
    pub async fn wait_delta(
        &self,
        timeout: Duration,
        pred: impl Fn(&DeltaDiscoveryRequest) -> bool,
    ) -> Option<DeltaDiscoveryRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.delta_requests().into_iter().find(|r| pred(r)) {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for a request matching `pred`.
    pub async fn wait_request(
        &self,
        timeout: Duration,
        pred: impl Fn(&DiscoveryRequest) -> bool,
    ) -> Option<DiscoveryRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for an ACK of the current version of `type_url`.
    pub async fn wait_ack(&self, type_url: &str, timeout: Duration) -> bool {
        let v = self.version(type_url).to_string();
        self.wait_request(timeout, |r| {
            r.type_url == type_url
                && r.version_info == v
                && r.error_detail.is_none()
                && !r.response_nonce.is_empty()
        })
        .await
        .is_some()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for ScriptedAds {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
