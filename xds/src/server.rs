//! Building the server: the tonic services to mount, the pusher, status.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryServiceServer;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tokio::sync::watch;

use crate::ads::AdsServer;
use crate::cache::Cache;
use crate::generator::Generator;
use crate::metrics::Metrics;
use crate::outbound::Budget;
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
    /// Server-wide bytes of responses built (resource bodies copied into a
    /// protobuf message) and not yet handed to the transport (default 16
    /// MiB). When many proxies sync at once, the rest wait their turn
    /// instead of all holding their copies together. A response larger
    /// than this waits until it has the whole budget to itself.
    pub response_budget_bytes: usize,
    /// How long a response keeps its share of the budget while the client
    /// does not read on (default 10 s); then the share goes back, so a
    /// client that stopped reading cannot starve the others. It still holds
    /// that one response, in the transport's buffers.
    pub response_stall: Duration,
    /// Resource data per delta response (default 256 KiB); larger updates are
    /// sent as several responses, each with its own nonce. Small responses
    /// keep what one stream holds at a time small: the built message and its
    /// encoding, and what h2 buffers for a client that reads slowly (h2
    /// stops asking for more once about 400 KiB wait, but takes a whole
    /// message at a time). On the per-type services, whose responses tonic
    /// encodes into a buffer it keeps at its largest size for the life of
    /// the stream, it also bounds what an idle proxy costs. Much smaller is
    /// not better: every response is one more ACK and status update; in the
    /// scale benchmark (1,000 proxies, single debug runs) the initial sync
    /// took 23.6 CPU-seconds at 32 KiB and 19.7 at 256 KiB, for a peak of
    /// 522 and 562 MiB.
    /// State-of-the-world responses cannot be split (a CDS or LDS response
    /// carries the whole set).
    pub delta_response_bytes: usize,
}

impl Default for XdsConfig {
    fn default() -> Self {
        XdsConfig {
            debounce: DebounceConfig::default(),
            response_queue: 8,
            max_request_bytes: 4 << 20,
            response_budget_bytes: 16 << 20,
            response_stall: Duration::from_secs(10),
            delta_response_bytes: 256 << 10,
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
        if config.response_budget_bytes == 0 || config.delta_response_bytes == 0 {
            return Err(XdsError::Config(
                "response_budget_bytes and delta_response_bytes must be at least 1".into(),
            ));
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
        let budget = Arc::new(Budget::new(
            config.response_budget_bytes,
            config.response_stall,
            metrics.clone(),
        ));
        let shared = Arc::new(Shared {
            cache: Cache::new(generator, metrics.clone()),
            budget,
            same: Default::default(),
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

    /// The aggregated discovery service (ADS), SotW and delta, with response
    /// bodies that keep no buffer between messages (see [`AdsServer`]).
    pub fn ads(&self) -> AdsServer {
        AdsServer::new(self.service(None), self.shared.config.max_request_bytes)
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
