//! Isthmus data plane: sidecar, east-west, ingress and egress proxy driven
//! only by Envoy v3 xDS resources.
//!
//! Layout: `config` turns protos into validated typed config (errors become
//! NACKs); `xds` is the ADS client; `apply` owns configuration and builds
//! the runtime `state`; `listener` owns sockets and chooses filter chains;
//! `proxy` runs connections; `tls` does origination, termination, SPIFFE
//! verification and ClientHello inspection; `lb` and `outlier` choose
//! hosts; `admin` and `metrics` are for operators.

pub mod accesslog;
pub mod admin;
pub mod apply;
pub mod authn;
pub mod cli;
pub mod config;
pub mod dnsproxy;
pub mod http;
pub mod lb;
pub mod listener;
pub mod metrics;
pub mod outlier;
pub mod proxy;
pub mod rbac;
pub mod resolve;
pub mod state;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod xds;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::LocalityName;
pub use tls::{CertReceiver, WorkloadCertificate};

/// Who this proxy is, as sent in every xDS request.
#[derive(Debug, Clone, Default)]
pub struct NodeIdentity {
    /// Istio form `TYPE~IP~POD.NS~NS.svc.cluster.local`.
    pub id: String,
    pub cluster: String,
    /// Node metadata (`CLUSTER_ID`, `NAMESPACE`, `ISTHMUS_ROLE`, ...).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub locality: LocalityName,
}

/// Everything `isthmus-gateway` (and `isthmus gateway`) passes to [`run`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Control plane ADS address, e.g. `http://127.0.0.1:15010`.
    pub xds_address: String,
    pub node: NodeIdentity,
    /// Admin server address (port 15000 by convention; port 0 in tests).
    pub admin_address: SocketAddr,
    /// The workload certificate (SDS `default`); `None` for a proxy that
    /// never terminates or originates mTLS itself (the east-west gateway).
    pub cert: Option<CertReceiver>,
    /// How long connections of a removed listener, or of the whole proxy
    /// after SIGTERM, may continue before they are closed.
    pub drain_time: Duration,
    /// Upstream connect attempts per downstream connection (distinct hosts).
    pub connect_attempts: u32,
    /// Delta or state-of-the-world ADS (default: delta with fallback).
    pub xds_mode: xds::XdsMode,
    /// East-west gateways: serve and use the QUIC tunnel (needs `cert`).
    pub tunnel: Option<tunnel::TunnelConfig>,
    /// The control plane's SPIFFE ID, checked when `xds_address` is
    /// `https://` (mutual TLS with `cert`); e.g.
    /// `spiffe://cluster.local/ns/istio-system/sa/isthmus-control`.
    pub xds_server_identity: Option<String>,
    /// Span batching towards OTLP collectors (which collectors, and the
    /// sampling, come from xDS: the connection manager's `tracing`).
    pub trace_export: trace::ExportOptions,
    /// Where STRICT_DNS/LOGICAL_DNS clusters (and the DNS proxy's
    /// forwarding) resolve names; empty upstream: /etc/resolv.conf.
    pub resolver: resolve::ResolverOptions,
    /// Serve the DNS proxy here (UDP and TCP; Istio's 127.0.0.1:15053),
    /// answering from the control plane's name table and forwarding the
    /// rest to `resolver.upstream`.
    pub dns_proxy: Option<SocketAddr>,
    /// Gets the roots of every accepted SDS `ROOTCA` (for the proxy's CA
    /// client and xDS trust during a root rotation).
    pub mesh_roots: Option<tls::mesh_roots::MeshRootsSender>,
    /// How long readiness waits for a secret the config references (an
    /// ingress `credentialName`) before going ahead without it.
    pub secret_warm_timeout: Duration,
    /// `TCP_NOTSENT_LOWAT` on both legs of proxied connections
    /// (`proxy::socket`); 0 leaves the kernel's default.
    pub tcp_notsent_lowat: u32,
}

impl GatewayConfig {
    pub fn new(
        xds_address: impl Into<String>,
        node: NodeIdentity,
        admin_address: SocketAddr,
    ) -> Self {
        Self {
            xds_address: xds_address.into(),
            node,
            admin_address,
            cert: None,
            drain_time: Duration::from_secs(30),
            connect_attempts: 3,
            xds_mode: xds::XdsMode::Auto,
            tunnel: None,
            xds_server_identity: None,
            trace_export: trace::ExportOptions::default(),
            resolver: resolve::ResolverOptions::default(),
            dns_proxy: None,
            mesh_roots: None,
            secret_warm_timeout: xds::SECRET_WARM_TIMEOUT,
            tcp_notsent_lowat: proxy::socket::DEFAULT_NOTSENT_LOWAT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("xDS address {0:?} is not a valid URI (expected e.g. http://istiod:15010): {1}")]
    XdsAddress(String, String),
    #[error(transparent)]
    Xds(#[from] xds::XdsError),
    #[error(transparent)]
    Tunnel(#[from] tunnel::TunnelError),
    #[error("the QUIC tunnel needs this gateway's own certificate (GatewayConfig.cert)")]
    TunnelWithoutCertificate,
    #[error(transparent)]
    DnsProxy(#[from] dnsproxy::DnsProxyError),
    #[error("installing the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

/// A running data plane.
#[derive(Debug)]
pub struct Gateway {
    admin_address: SocketAddr,
    tunnel_address: Option<SocketAddr>,
    ready: watch::Receiver<bool>,
    bound: watch::Receiver<BTreeMap<String, SocketAddr>>,
    listeners: listener::ListenerManager,
    stop: CancellationToken,
    tracker: TaskTracker,
    drain_time: Duration,
    dns_proxy: Option<dnsproxy::DnsProxy>,
}

impl Gateway {
    /// Binds the admin server and starts the xDS client. Listeners appear
    /// as configuration arrives.
    pub async fn start(config: GatewayConfig) -> Result<Self, GatewayError> {
        tonic::transport::Endpoint::from_shared(config.xds_address.clone())
            .map_err(|e| GatewayError::XdsAddress(config.xds_address.clone(), e.to_string()))?;
        let xds_target = xds::XdsTarget::parse(
            &config.xds_address,
            config.cert.as_ref(),
            config.xds_server_identity.as_deref(),
        )?;
        if xds_target.is_tls() {
            tracing::info!(server = %config.xds_address, identity = ?config.xds_server_identity, "xDS over mutual TLS");
        }
        let metrics = Arc::new(metrics::Metrics::for_node(
            &config.node,
            config.cert.clone(),
        )?);
        if let Some(cert) = &config.cert {
            metrics.health.watch_certificate(cert.clone());
        }
        let (clusters_tx, clusters_rx) = watch::channel(Arc::new(state::ClusterTable::default()));
        let (dump_tx, dump_rx) = watch::channel(Arc::new(state::ResourceSet::default()));
        let (ready_tx, ready_rx) = watch::channel(false);
        let (routes_tx, routes_rx) = watch::channel(Arc::new(state::RouteTables::default()));
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let tunnel_endpoint = match (&config.tunnel, &config.cert) {
            (None, _) => None,
            (Some(_), None) => return Err(GatewayError::TunnelWithoutCertificate),
            (Some(t), Some(cert)) => Some(tunnel::endpoint(*t, cert)?),
        };
        proxy::socket::set_notsent_lowat(config.tcp_notsent_lowat);
        let ctx = proxy::connection::ProxyContext {
            tunnel: tunnel_endpoint
                .clone()
                .map(|ep| tunnel::TunnelClient::new(ep, metrics.clone())),
            clusters: clusters_rx.clone(),
            routes: routes_rx,
            metrics: metrics.clone(),
            connect_attempts: config.connect_attempts.max(1),
            telemetry: Arc::new(trace::Telemetry::new(
                trace::LocalPeer::from_node(&config.node),
                config.trace_export.clone(),
            )),
        };
        let listeners =
            listener::ListenerManager::spawn(ctx.clone(), config.drain_time, tracker.clone());
        let tunnel_address = match tunnel_endpoint {
            Some(ep) => {
                let addr = ep.local_addr().ok();
                tracing::info!(address = ?addr, "QUIC tunnel listening");
                // A tunnel endpoint exists only with a certificate (checked above).
                let cert = config
                    .cert
                    .clone()
                    .ok_or(GatewayError::TunnelWithoutCertificate)?;
                tokio::spawn(tunnel::serve(
                    ep,
                    cert,
                    listeners.by_port(),
                    ctx,
                    stop.clone(),
                ));
                addr
            }
            None => None,
        };
        if let Some(tx) = config.mesh_roots.clone() {
            tokio::spawn(tls::mesh_roots::publish(dump_rx.clone(), tx));
        }
        let admin_state = admin::AdminState {
            metrics: metrics.clone(),
            ready: ready_rx.clone(),
            resources: dump_rx,
            clusters: clusters_rx,
            bound: listeners.bound(),
        };
        let (admin_address, admin) =
            admin::bind(config.admin_address, admin_state, stop.clone()).await?;
        tokio::spawn(admin);
        tracing::info!(address = %admin_address, "admin server listening");
        let applier = apply::Applier::new(
            clusters_tx,
            dump_tx,
            routes_tx,
            listeners.clone(),
            config.cert.clone(),
        )
        .with_resolver(&config.resolver);
        let dns_proxy = match config.dns_proxy {
            Some(listen) => {
                let cfg = dnsproxy::DnsProxyConfig {
                    listen,
                    upstream: config.resolver.upstream.clone(),
                };
                Some(dnsproxy::DnsProxy::start(&cfg, applier.name_table()).await?)
            }
            None => None,
        };
        let client = xds::XdsClient::new(
            config.xds_address.clone(),
            node_proto(&config.node),
            applier,
            ready_tx,
            metrics,
            config.xds_mode,
        )
        .with_target(xds_target)
        .with_secret_warm_timeout(config.secret_warm_timeout);
        let client = if dns_proxy.is_some() {
            client.with_name_table()
        } else {
            client
        };
        let client = if config.cert.is_some() {
            client.with_mesh_roots()
        } else {
            client
        };
        tokio::spawn(client.run(stop.clone()));
        Ok(Self {
            admin_address,
            tunnel_address,
            ready: ready_rx,
            bound: listeners.bound(),
            listeners,
            stop,
            tracker,
            drain_time: config.drain_time,
            dns_proxy,
        })
    }

    /// Where the DNS proxy listens (UDP and TCP), when it runs.
    pub fn dns_proxy_address(&self) -> Option<SocketAddr> {
        self.dns_proxy.as_ref().map(dnsproxy::DnsProxy::local_addr)
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The bound UDP address of the QUIC tunnel, if it runs.
    pub fn tunnel_address(&self) -> Option<SocketAddr> {
        self.tunnel_address
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the first complete configuration is applied.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.ready.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The bound address of a listener (its port resolved when configured as 0).
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.bound.borrow().get(name).copied()
    }

    /// Waits until a listener with `name` is bound.
    pub async fn wait_listener(&self, name: &str, timeout: Duration) -> Option<SocketAddr> {
        let mut rx = self.bound.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|m| m.contains_key(name))).await;
        match r {
            Ok(Ok(m)) => m.get(name).copied(),
            _ => None,
        }
    }

    /// Graceful drain: stop accepting, let connections finish for up to
    /// the drain time, then stop the xDS client and the admin server.
    pub async fn shutdown(self) {
        self.listeners.shutdown().await;
        self.tracker.close();
        if tokio::time::timeout(self.drain_time, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tracker.len(),
                "drain time over; closing remaining connections"
            );
        }
        self.stop.cancel();
    }
}

/// The proxy's entry: runs until SIGTERM or Ctrl-C, then drains.
pub async fn run(config: GatewayConfig) -> Result<(), GatewayError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(GatewayError::Signal)?;
    let gateway = Gateway::start(config).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
    }
    gateway.shutdown().await;
    Ok(())
}

fn node_proto(n: &NodeIdentity) -> Node {
    Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        metadata: Some(json_struct(&n.metadata)),
        locality: Some(Locality {
            region: n.locality.region.clone(),
            zone: n.locality.zone.clone(),
            sub_zone: n.locality.sub_zone.clone(),
        }),
        user_agent_name: "isthmus-gateway".into(),
        ..Default::default()
    }
}

fn json_struct(m: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
    }
}

fn json_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_struct(o)),
    };
    Value { kind: Some(kind) }
}
