//! The tonic service implementations: ADS and the per-type services.

use std::sync::Arc;

use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryService;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::generator::Names;
use crate::inbound::Inbound;
use crate::outbound::{DeltaPlan, ResponseStream, SotwPlan};
use crate::proxy::Proxy;
use crate::resource::set_version;
use crate::status::StreamKind;
use crate::stream::{Shared, StreamCtx};
use crate::types::TypeUrl;
use crate::{delta, sotw};

/// Response stream of state-of-the-world methods: builds each
/// `DiscoveryResponse` when the transport asks for it.
pub type SotwStream = ResponseStream<SotwPlan>;
/// Response stream of delta methods: builds each `DeltaDiscoveryResponse`
/// when the transport asks for it.
pub type DeltaStream = ResponseStream<DeltaPlan>;

/// Decides whether a connection (its request extensions, e.g. the TLS
/// peer) may speak for `Proxy`; `Err` carries the operator-facing reason.
pub type Authorizer = Arc<dyn Fn(&Proxy, &tonic::Extensions) -> Result<(), String> + Send + Sync>;

/// Implements ADS, and (restricted to one type) each per-type service.
/// Obtain it through [`crate::XdsServer`].
#[derive(Clone)]
pub struct XdsService {
    shared: Arc<Shared>,
    only: Option<TypeUrl>,
    authorizer: Option<Authorizer>,
}

impl XdsService {
    pub(crate) fn new(
        shared: Arc<Shared>,
        only: Option<TypeUrl>,
        authorizer: Option<Authorizer>,
    ) -> XdsService {
        XdsService {
            shared,
            only,
            authorizer,
        }
    }

    fn parse_proxy(
        &self,
        node: Option<&envoy_types::pb::envoy::config::core::v3::Node>,
    ) -> Result<Proxy, Status> {
        Proxy::from_node(node).map_err(|e| {
            self.shared.metrics.rejected("bad_node");
            Status::invalid_argument(e.to_string())
        })
    }

    fn authorize(&self, proxy: &Proxy, extensions: &tonic::Extensions) -> Result<(), Status> {
        let Some(authorize) = &self.authorizer else {
            return Ok(());
        };
        authorize(proxy, extensions).map_err(|reason| {
            self.shared.metrics.rejected("unauthorized");
            tracing::warn!(node = %proxy.node_id, %reason, "refusing xDS client");
            Status::permission_denied(reason)
        })
    }

    pub(crate) async fn open_sotw(
        &self,
        request: Request<Inbound<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        let (_, extensions, mut inbound) = request.into_parts();
        // The node is only guaranteed on the first request, so read it
        // before answering: a bad node fails the call with InvalidArgument.
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::cancelled("stream closed before its first request"))?;
        let proxy = self.parse_proxy(first.node.as_ref())?;
        self.authorize(&proxy, &extensions)?;
        let ctx = StreamCtx::new(
            self.shared.clone(),
            proxy,
            StreamKind::StateOfTheWorld,
            self.only,
        );
        let (tx, rx) = mpsc::channel(self.shared.config.response_queue);
        tokio::spawn(sotw::run(ctx, first, inbound, tx));
        Ok(Response::new(ResponseStream::new(
            rx,
            self.shared.budget.clone(),
        )))
    }

    pub(crate) async fn open_delta(
        &self,
        request: Request<Inbound<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let (_, extensions, mut inbound) = request.into_parts();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::cancelled("stream closed before its first request"))?;
        let proxy = self.parse_proxy(first.node.as_ref())?;
        self.authorize(&proxy, &extensions)?;
        let ctx = StreamCtx::new(self.shared.clone(), proxy, StreamKind::Delta, self.only);
        let (tx, rx) = mpsc::channel(self.shared.config.response_queue);
        tokio::spawn(delta::run(ctx, first, inbound, tx));
        Ok(Response::new(ResponseStream::new(
            rx,
            self.shared.budget.clone(),
        )))
    }

    /// The unary REST-style `Fetch*` methods: one response, no state.
    async fn fetch(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let (_, extensions, req) = request.into_parts();
        let proxy = self.parse_proxy(req.node.as_ref())?;
        self.authorize(&proxy, &extensions)?;
        let mut ctx = StreamCtx::new(
            self.shared.clone(),
            proxy,
            StreamKind::StateOfTheWorld,
            self.only,
        );
        let t = ctx.resolve_type(&req.type_url)?.ok_or_else(|| {
            Status::invalid_argument(format!("type {:?} is not served here", req.type_url))
        })?;
        let names = if req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*")
        {
            Names::All
        } else {
            Names::some(req.resource_names)
        };
        let generated = ctx
            .generate(t, &names)
            .await
            .map_err(|e| Status::internal(format!("generating {t} resources failed: {e}")))?;
        Ok(Response::new(DiscoveryResponse {
            version_info: set_version(generated.iter().map(|(n, r)| (n, &r.version))),
            resources: generated.values().map(|r| r.body.clone()).collect(),
            type_url: t.as_str().to_owned(),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        self.open_sotw(request.map(Inbound::Tonic)).await
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        self.open_delta(request.map(Inbound::Tonic)).await
    }
}

macro_rules! per_type_service {
    ($trait:ident, $sotw_ty:ident, $sotw_fn:ident, $delta_ty:ident, $delta_fn:ident, $fetch_fn:ident) => {
        #[tonic::async_trait]
        impl $trait for XdsService {
            type $sotw_ty = SotwStream;
            type $delta_ty = DeltaStream;

            async fn $sotw_fn(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStream>, Status> {
                self.open_sotw(request.map(Inbound::Tonic)).await
            }

            async fn $delta_fn(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                self.open_delta(request.map(Inbound::Tonic)).await
            }

            async fn $fetch_fn(
                &self,
                request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch(request).await
            }
        }
    };
}

per_type_service!(
    ClusterDiscoveryService,
    StreamClustersStream,
    stream_clusters,
    DeltaClustersStream,
    delta_clusters,
    fetch_clusters
);
per_type_service!(
    EndpointDiscoveryService,
    StreamEndpointsStream,
    stream_endpoints,
    DeltaEndpointsStream,
    delta_endpoints,
    fetch_endpoints
);
per_type_service!(
    ListenerDiscoveryService,
    StreamListenersStream,
    stream_listeners,
    DeltaListenersStream,
    delta_listeners,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    StreamRoutesStream,
    stream_routes,
    DeltaRoutesStream,
    delta_routes,
    fetch_routes
);
per_type_service!(
    SecretDiscoveryService,
    StreamSecretsStream,
    stream_secrets,
    DeltaSecretsStream,
    delta_secrets,
    fetch_secrets
);
