//! Building the server: the tonic services to mount, the pusher, status.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryServiceServer;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio::sync::watch;

use crate::cache::Cache;
use crate::generator::Generator;
use crate::metrics::Metrics;
use crate::push::{spawn_debouncer, DebounceConfig, PushLog, Pusher};
use crate::service::XdsService;
use crate::status::{ProxyStatus, StatusRegistry};
use crate::stream::Shared;
use crate::types::TypeUrl;

/// Errors building the server.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("registering the xDS metrics failed: {0} (is a second xDS server using the same prometheus registry?)")]
    Metrics(#[from] prometheus::Error),
    #[error("invalid xDS server setting: {0}")]
    Config(String),
}

/// Server settings.
#[derive(Clone, Copy, Debug)]
pub struct XdsConfig {
    pub debounce: DebounceConfig,
    /// Responses queued per stream before the stream's task waits for the
    /// client to read (default 8). A slow client only ever delays itself;
    /// once it reads again it receives the latest state, not a backlog.
    pub response_queue: usize,
    /// Largest request accepted from a proxy (default 4 MiB).
    pub max_request_bytes: usize,
}

impl Default for XdsConfig {
    fn default() -> Self {
        XdsConfig {
            debounce: DebounceConfig::default(),
            response_queue: 8,
            max_request_bytes: 4 << 20,
        }
    }
}

/// The xDS server. Cheap to clone; all clones serve the same proxies.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
    authorizer: Option<crate::service::Authorizer>,
}

impl XdsServer {
    /// Creates the server and the [`Pusher`] the control plane announces
    /// input changes with. Must be called inside a tokio runtime (it spawns
    /// the debounce task).
    pub fn new(
        generator: Arc<dyn Generator>,
        config: XdsConfig,
        registry: &prometheus::Registry,
    ) -> Result<(XdsServer, Pusher), XdsError> {
        if config.response_queue == 0 {
            return Err(XdsError::Config("response_queue must be at least 1".into()));
        }
        if config.debounce.max_delay < config.debounce.quiet {
            return Err(XdsError::Config(format!(
                "debounce max_delay ({:?}) is shorter than the quiet period ({:?})",
                config.debounce.max_delay, config.debounce.quiet
            )));
        }
        let metrics = Metrics::new(registry)?;
        let (published, _) = watch::channel(Arc::new(PushLog::default()));
        let pusher = spawn_debouncer(config.debounce, published.clone(), Some(metrics.clone()));
        let shared = Arc::new(Shared {
            cache: Cache::new(generator, metrics.clone()),
            metrics,
            published,
            statuses: StatusRegistry::new(),
            next_stream: AtomicU64::new(1),
            config,
        });
        Ok((
            XdsServer {
                shared,
                authorizer: None,
            },
            pusher,
        ))
    }

    fn service(&self, only: Option<TypeUrl>) -> XdsService {
        XdsService::new(self.shared.clone(), only, self.authorizer.clone())
    }

    /// The same server whose services (mounted from the returned value)
    /// first ask `authorizer` whether the connection may speak for the proxy
    /// its first request names (e.g. the TLS client identity against the
    /// node's namespace and service account); a refusal fails the stream
    /// with `PermissionDenied` and the authorizer's message.
    pub fn with_authorizer(&self, authorizer: crate::service::Authorizer) -> XdsServer {
        XdsServer {
            shared: self.shared.clone(),
            authorizer: Some(authorizer),
        }
    }

    /// The aggregated discovery service (ADS), SotW and delta.
    pub fn ads(&self) -> AggregatedDiscoveryServiceServer<XdsService> {
        AggregatedDiscoveryServiceServer::new(self.service(None))
            .max_decoding_message_size(self.shared.config.max_request_bytes)
    }

    pub fn cds(&self) -> ClusterDiscoveryServiceServer<XdsService> {
        ClusterDiscoveryServiceServer::new(self.service(Some(TypeUrl::Cluster)))
            .max_decoding_message_size(self.shared.config.max_request_bytes)
    }

    pub fn eds(&self) -> EndpointDiscoveryServiceServer<XdsService> {
        EndpointDiscoveryServiceServer::new(self.service(Some(TypeUrl::ClusterLoadAssignment)))
            .max_decoding_message_size(self.shared.config.max_request_bytes)
    }

    pub fn lds(&self) -> ListenerDiscoveryServiceServer<XdsService> {
        ListenerDiscoveryServiceServer::new(self.service(Some(TypeUrl::Listener)))
            .max_decoding_message_size(self.shared.config.max_request_bytes)
    }

    pub fn rds(&self) -> RouteDiscoveryServiceServer<XdsService> {
        RouteDiscoveryServiceServer::new(self.service(Some(TypeUrl::RouteConfiguration)))
            .max_decoding_message_size(self.shared.config.max_request_bytes)
    }

    pub fn sds(&self) -> SecretDiscoveryServiceServer<XdsService> {
        SecretDiscoveryServiceServer::new(self.service(Some(TypeUrl::Secret)))
            .max_decoding_message_size(self.shared.config.max_request_bytes)
    }

    /// Status of every open stream (one entry per stream, so a proxy that
    /// uses per-type services appears once per type).
    pub fn status(&self) -> Vec<ProxyStatus> {
        self.shared.statuses.snapshot()
    }

    /// Status of the streams of one node id (config dump per proxy).
    pub fn proxy_status(&self, node_id: &str) -> Vec<ProxyStatus> {
        self.status()
            .into_iter()
            .filter(|s| s.proxy.node_id == node_id)
            .collect()
    }

    /// The input version and sequence number of the last published push.
    pub fn last_push(&self) -> (u64, u64) {
        let log = self.shared.published.borrow();
        (log.version, log.seq)
    }
}
