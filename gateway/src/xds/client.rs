//! ADS client, state of the world.
//!
//! Subscribes to CDS and LDS as wildcards and to EDS and SDS by the names
//! the accepted clusters and listeners reference. Every response is
//! converted whole; if any resource is invalid (or the update cannot be
//! applied) the response is NACKed with an `error_detail` naming the
//! resource, and the last good configuration keeps running. On stream loss
//! it reconnects with exponential backoff and re-subscribes with the last
//! accepted versions, serving the whole time (static stability).

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
    DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use prost::{Message, Name};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{TypeKind, XdsError, XdsMode};
use crate::apply::{Applier, Update};
use crate::config::{self, ConfigError};
use crate::metrics::Metrics;

/// Per-type subscription state.
#[derive(Debug, Default, Clone)]
pub(super) struct Sub {
    pub(super) names: Vec<String>,
    /// Last accepted version (sent back with every request).
    pub(super) version: String,
    /// Nonce of the last response seen.
    pub(super) nonce: String,
    /// Whether a response was ever accepted.
    pub(super) received: bool,
    /// Delta only: accepted raw resources by name, with their versions.
    pub(super) resources: BTreeMap<String, (String, Any)>,
}

#[derive(Debug)]
pub struct XdsClient {
    pub(super) address: String,
    pub(super) node: Node,
    pub(super) applier: Applier,
    pub(super) subs: BTreeMap<TypeKind, Sub>,
    pub(super) ready_tx: watch::Sender<bool>,
    pub(super) metrics: std::sync::Arc<Metrics>,
    pub(super) mode: XdsMode,
    /// Plaintext or mutual TLS; `None` until [`XdsClient::with_target`]
    /// (then the address is dialed as plaintext, as before).
    pub(super) target: Option<super::XdsTarget>,
    /// Subscribe to `ROOTCA` even when no listener or cluster uses it
    /// ([`XdsClient::with_mesh_roots`]).
    pub(super) mesh_roots: bool,
    /// How long readiness waits for secrets the config references.
    pub(super) secret_warm_timeout: Duration,
    /// Since when everything but some referenced secret is there.
    pub(super) secrets_missing_since: Option<tokio::time::Instant>,
}

/// Initial and maximum reconnect delays.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Envoy's default SDS `initial_fetch_timeout`.
pub const SECRET_WARM_TIMEOUT: Duration = Duration::from_secs(15);

impl XdsClient {
    pub fn new(
        address: String,
        node: Node,
        applier: Applier,
        ready_tx: watch::Sender<bool>,
        metrics: std::sync::Arc<Metrics>,
        mode: XdsMode,
    ) -> Self {
        let mut subs = BTreeMap::new();
        for k in [
            TypeKind::Cluster,
            TypeKind::Listener,
            TypeKind::Endpoint,
            TypeKind::Secret,
            TypeKind::Route,
        ] {
            subs.insert(k, Sub::default());
        }
        Self {
            address,
            node,
            applier,
            subs,
            ready_tx,
            metrics,
            mode,
            target: None,
            mesh_roots: false,
            secret_warm_timeout: SECRET_WARM_TIMEOUT,
            secrets_missing_since: None,
        }
    }

    /// How long readiness waits for referenced secrets before it goes
    /// ahead without them (default [`SECRET_WARM_TIMEOUT`]).
    pub fn with_secret_warm_timeout(mut self, timeout: Duration) -> Self {
        self.secret_warm_timeout = timeout;
        self
    }

    /// Always subscribes to the mesh bundle (`ROOTCA`), also when no
    /// listener or cluster references it (a pure SNI-passthrough east-west
    /// gateway): a proxy with a certificate needs it to follow a root
    /// rotation for its own control-plane trust (see
    /// `isthmus_identity::ca_trust`). Readiness still waits only for the
    /// secrets the configuration references, so a missing `ROOTCA` never
    /// makes such a proxy unready.
    pub fn with_mesh_roots(mut self) -> Self {
        self.mesh_roots = true;
        let names = self.sds_subscription();
        if let Some(sub) = self.subs.get_mut(&TypeKind::Secret) {
            sub.names = names;
        }
        self
    }

    /// The SDS names to subscribe to: the referenced ones, plus `ROOTCA`
    /// with [`XdsClient::with_mesh_roots`].
    pub(super) fn sds_subscription(&self) -> Vec<String> {
        let mut names = self.applier.resources().sds_names();
        if self.mesh_roots && !names.iter().any(|n| n == config::ROOT_CA_SECRET) {
            names.push(config::ROOT_CA_SECRET.to_string());
            names.sort();
        }
        names
    }

    /// Connect as `target` says (plaintext or mutual TLS).
    pub fn with_target(mut self, target: super::XdsTarget) -> Self {
        self.target = Some(target);
        self
    }

    /// A fresh gRPC channel to the control plane.
    pub(super) async fn channel(&self) -> Result<tonic::transport::Channel, XdsError> {
        match &self.target {
            Some(t) => t.connect(&self.address).await,
            None => {
                let endpoint = tonic::transport::Endpoint::from_shared(self.address.clone())
                    .map_err(|e| XdsError::Address(self.address.clone(), e.to_string()))?;
                isthmus_identity::channel::connect(&endpoint, None)
                    .await
                    .map_err(|e| XdsError::Connect(self.address.clone(), e.to_string()))
            }
        }
    }

    /// Also subscribes to the name table (the DNS proxy runs).
    pub fn with_name_table(mut self) -> Self {
        self.subs.insert(TypeKind::NameTable, Sub::default());
        self
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut delta = self.mode != XdsMode::StateOfTheWorld;
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = async { if delta { self.delta_once().await } else { self.stream_once().await } } => r,
            };
            if let Err((XdsError::DeltaUnsupported, _)) = &result {
                if self.mode == XdsMode::Auto {
                    tracing::info!(server = %self.address, "control plane does not serve delta ADS; using state of the world");
                    delta = false;
                    continue;
                }
            }
            match result {
                Ok(progress) => {
                    tracing::warn!(server = %self.address, "ADS stream ended; reconnecting");
                    if progress {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err((e, progress)) => {
                    if progress {
                        backoff = BACKOFF_MIN;
                    }
                    tracing::warn!(server = %self.address, error = %e, retry_in = ?backoff, "ADS stream failed; serving last good config");
                }
            }
            let jitter = rand::rng().random_range(0.8..1.2);
            let pause = tokio::time::sleep(backoff.mul_f64(jitter));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = &mut pause => break,
                    // Without a control plane, DNS clusters still follow
                    // their names (static stability).
                    () = self.applier.resolution_changed() => self.apply_resolved().await,
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn request(&self, kind: TypeKind, error: Option<String>) -> DiscoveryRequest {
        let sub = &self.subs[&kind];
        DiscoveryRequest {
            version_info: sub.version.clone(),
            node: Some(self.node.clone()),
            resource_names: if kind.wildcard() {
                Vec::new()
            } else {
                sub.names.clone()
            },
            type_url: kind.type_url().to_string(),
            response_nonce: sub.nonce.clone(),
            error_detail: error.map(|message| Status {
                // INVALID_ARGUMENT, as Envoy uses for rejected config.
                code: 3,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// One ADS stream. Returns whether any response was accepted.
    async fn stream_once(&mut self) -> Result<bool, (XdsError, bool)> {
        let mut client =
            AggregatedDiscoveryServiceClient::new(self.channel().await.map_err(|e| (e, false))?);
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(32);
        // A new stream forgets nonces; versions are kept so the server can
        // skip resending what we have.
        for sub in self.subs.values_mut() {
            sub.nonce.clear();
        }
        for kind in [TypeKind::Cluster, TypeKind::Listener, TypeKind::NameTable] {
            if self.subs.contains_key(&kind) {
                send(&tx, self.request(kind, None)).await?;
            }
        }
        for kind in [TypeKind::Endpoint, TypeKind::Secret, TypeKind::Route] {
            if !self.subs[&kind].names.is_empty() {
                send(&tx, self.request(kind, None)).await?;
            }
        }
        let mut inbound = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| (XdsError::Stream(e.to_string()), false))?
            .into_inner();
        let mut progress = false;
        let _connected = self.metrics.health.xds_connection();
        loop {
            // DNS cluster re-resolutions are applied by this same owner,
            // between responses.
            let msg = loop {
                let warm = self.secrets_warm_deadline();
                tokio::select! {
                    m = inbound.message() => break m,
                    () = self.applier.resolution_changed() => self.apply_resolved().await,
                    () = sleep_until_some(warm) => self.update_ready(),
                }
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(progress),
                Err(e) => return Err((XdsError::Stream(e.to_string()), progress)),
            };
            if self.handle(&tx, resp).await.map_err(|e| (e, progress))? {
                progress = true;
            }
        }
    }

    /// Rebuilds DNS clusters after a re-resolution; a failure keeps the
    /// previous addresses.
    pub(super) async fn apply_resolved(&mut self) {
        if let Err(e) = self.applier.apply_resolved().await {
            tracing::warn!(error = %e, "applying re-resolved DNS cluster addresses failed; keeping the previous ones");
        }
    }

    /// Handles one response; returns whether it was accepted.
    async fn handle(
        &mut self,
        tx: &mpsc::Sender<DiscoveryRequest>,
        resp: DiscoveryResponse,
    ) -> Result<bool, XdsError> {
        let Some(kind) = TypeKind::from_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "ignoring response of an unsubscribed type");
            return Ok(false);
        };
        if let Some(sub) = self.subs.get_mut(&kind) {
            sub.nonce = resp.nonce.clone();
        }
        match self.convert_and_apply(kind, &resp).await {
            Ok(()) => {
                self.metrics
                    .xds_updates_total
                    .with_label_values(&[kind.short(), "ack"])
                    .inc();
                self.metrics.health.xds_accepted(kind.short());
                if let Some(sub) = self.subs.get_mut(&kind) {
                    sub.version = resp.version_info.clone();
                    sub.received = true;
                }
                tracing::info!(r#type = kind.short(), version = %resp.version_info, resources = resp.resources.len(), "xDS update applied");
                send(tx, self.request(kind, None))
                    .await
                    .map_err(|(e, _)| e)?;
                self.resubscribe(tx).await?;
                self.update_ready();
                Ok(true)
            }
            Err(msg) => {
                self.metrics
                    .xds_updates_total
                    .with_label_values(&[kind.short(), "nack"])
                    .inc();
                tracing::warn!(r#type = kind.short(), version = %resp.version_info, error = %msg, "xDS update rejected; keeping last good config");
                send(tx, self.request(kind, Some(msg)))
                    .await
                    .map_err(|(e, _)| e)?;
                Ok(false)
            }
        }
    }

    /// Sends new EDS/SDS subscriptions when the referenced names changed.
    async fn resubscribe(&mut self, tx: &mpsc::Sender<DiscoveryRequest>) -> Result<(), XdsError> {
        let wanted = [
            (TypeKind::Endpoint, self.applier.resources().eds_names()),
            (TypeKind::Secret, self.sds_subscription()),
            (TypeKind::Route, self.applier.resources().rds_names()),
        ];
        for (kind, names) in wanted {
            let changed = self.subs.get(&kind).is_some_and(|s| s.names != names);
            if changed {
                if let Some(sub) = self.subs.get_mut(&kind) {
                    sub.names = names;
                }
                send(tx, self.request(kind, None))
                    .await
                    .map_err(|(e, _)| e)?;
            }
        }
        Ok(())
    }

    /// Ready once listeners, clusters and everything they reference are
    /// there. A referenced secret that never arrives (an ingress
    /// `credentialName` whose Secret does not exist) holds readiness back
    /// only for `secret_warm_timeout`, as Envoy's SDS initial fetch
    /// timeout does: one missing certificate must not keep the whole
    /// gateway out of service; that host's handshakes fail until it
    /// arrives.
    pub(super) fn update_ready(&mut self) {
        if *self.ready_tx.borrow() {
            return;
        }
        let has = |k: TypeKind| self.subs.get(&k).is_some_and(|s| s.received);
        let set = self.applier.resources();
        let eds_ok = set
            .eds_names()
            .iter()
            .all(|n| set.endpoints.contains_key(n));
        let rds_ok = set.rds_names().iter().all(|n| set.routes.contains_key(n));
        if !(has(TypeKind::Cluster) && has(TypeKind::Listener) && eds_ok && rds_ok) {
            return;
        }
        let missing: Vec<String> = set
            .sds_names()
            .into_iter()
            .filter(|n| !set.secrets.contains_key(n))
            .collect();
        if !missing.is_empty() {
            let since = *self
                .secrets_missing_since
                .get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() < self.secret_warm_timeout {
                return;
            }
            tracing::warn!(
                ?missing,
                waited = ?self.secret_warm_timeout,
                "secrets the config references never arrived; ready without them (TLS that needs them fails until they do)"
            );
        }
        self.secrets_missing_since = None;
        self.ready_tx.send_replace(true);
    }

    /// When readiness stops waiting for missing secrets, if it waits.
    pub(super) fn secrets_warm_deadline(&self) -> Option<tokio::time::Instant> {
        self.secrets_missing_since
            .filter(|_| !*self.ready_tx.borrow())
            .map(|since| since + self.secret_warm_timeout)
    }

    async fn convert_and_apply(
        &mut self,
        kind: TypeKind,
        resp: &DiscoveryResponse,
    ) -> Result<(), String> {
        let update = convert(kind, &resp.resources, &self.subs[&kind].names).map_err(|errs| {
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        self.applier.apply(update).await.map_err(|e| e.to_string())
    }
}

/// Sleeps until `t`; never resolves for `None`.
pub(super) async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn send(
    tx: &mpsc::Sender<DiscoveryRequest>,
    req: DiscoveryRequest,
) -> Result<(), (XdsError, bool)> {
    tx.send(req)
        .await
        .map_err(|_| (XdsError::Stream("request stream closed".into()), false))
}

fn decode<T: Message + Name + Default>(
    kind: TypeKind,
    i: usize,
    any: &Any,
) -> Result<T, ConfigError> {
    if any.type_url != T::type_url() {
        return Err(ConfigError {
            kind: kind.resource_kind(),
            name: format!("#{i}"),
            field: "type_url".into(),
            reason: format!("expected {}, got {}", T::type_url(), any.type_url),
        });
    }
    T::decode(any.value.as_slice()).map_err(|e| ConfigError {
        kind: kind.resource_kind(),
        name: format!("#{i}"),
        field: "(protobuf)".into(),
        reason: format!("cannot decode: {e}"),
    })
}

/// Converts a whole response; collects every error so one NACK names them all.
pub fn convert(
    kind: TypeKind,
    resources: &[Any],
    subscribed: &[String],
) -> Result<Update, Vec<ConfigError>> {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

    let mut errors = Vec::new();
    macro_rules! collect {
        ($ty:ty, $conv:expr, $name:expr) => {{
            let mut out = BTreeMap::new();
            for (i, any) in resources.iter().enumerate() {
                match decode::<$ty>(kind, i, any).and_then(|r| $conv(&r)) {
                    Ok(v) => {
                        let name: String = $name(&v);
                        if out.insert(name.clone(), v).is_some() {
                            errors.push(ConfigError {
                                kind: kind.resource_kind(),
                                name,
                                field: "name".into(),
                                reason: "duplicate resource name in one response".into(),
                            });
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
            out
        }};
    }
    let update = match kind {
        TypeKind::Cluster => Update::Clusters(collect!(
            Cluster,
            config::cluster_from_proto,
            |c: &config::ClusterConfig| c.name.clone()
        )),
        TypeKind::Listener => Update::Listeners(collect!(
            Listener,
            config::listener_from_proto,
            |l: &config::ListenerConfig| l.name.clone()
        )),
        TypeKind::Endpoint => Update::Endpoints {
            assignments: collect!(
                ClusterLoadAssignment,
                config::load_assignment_from_proto,
                |l: &config::LoadAssignment| l.cluster_name.clone()
            ),
            keep: subscribed.to_vec(),
        },
        TypeKind::Secret => Update::Secrets {
            secrets: collect!(
                Secret,
                config::secret_from_proto,
                |s: &config::SecretConfig| s.name.clone()
            ),
            keep: subscribed.to_vec(),
        },
        TypeKind::Route => Update::Routes {
            routes: collect!(
                RouteConfiguration,
                config::route_config_from_proto,
                |r: &config::RouteTable| r.name.clone()
            ),
            keep: subscribed.to_vec(),
        },
        TypeKind::NameTable => match crate::dnsproxy::nametable::index_resources(resources) {
            Ok(index) => Update::NameTable(index),
            Err(e) => {
                errors.extend(e);
                Update::NameTable(Default::default())
            }
        },
    };
    if errors.is_empty() {
        Ok(update)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::util::pack_any;

    fn cluster(name: &str) -> Any {
        pack_any(Cluster {
            name: name.into(),
            load_assignment: Some(Default::default()),
            ..Default::default()
        })
    }

    #[test]
    fn convert_collects_every_error() {
        let wrong_type = Any {
            type_url: crate::xds::LISTENER_TYPE.into(),
            value: vec![],
        };
        let garbage = Any {
            type_url: crate::xds::CLUSTER_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        let errs = convert(
            TypeKind::Cluster,
            &[cluster("a"), wrong_type, garbage, cluster("a")],
            &[],
        )
        .expect_err("invalid");
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 3, "{text:?}");
        assert!(
            text[0].contains("#1")
                && text[0].contains("expected type.googleapis.com/envoy.config.cluster.v3.Cluster")
        );
        assert!(text[1].contains("#2") && text[1].contains("cannot decode"));
        assert!(text[2].contains("Cluster \"a\"") && text[2].contains("duplicate"));
    }

    #[test]
    fn convert_accepts_valid_set() {
        match convert(TypeKind::Cluster, &[cluster("a"), cluster("b")], &[]).expect("valid") {
            Update::Clusters(c) => assert_eq!(c.keys().collect::<Vec<_>>(), vec!["a", "b"]),
            other => panic!("unexpected {other:?}"),
        }
    }
}
