//! `isthmus control`: one cluster's control plane, wired from its parts.
//!
//! Data flows one way: the file source publishes config snapshots; the
//! exporter writes this cluster's exported services into the federation
//! registry; the inputs task joins config and registry into translation
//! inputs and tells the xDS server to push. The CA and xDS share one
//! TLS gRPC port; the admin port serves metrics, probes and debug views.

pub mod admin;
pub mod dns;
pub mod export;
pub mod federation;
pub mod gateway_names;
pub mod identity;
mod inputs;
pub mod jwks;
pub mod kubernetes;
pub mod metrics;
pub mod xds_auth;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::{CaService, CaServiceConfig, FileAuthenticator, PeerPolicy, TokenTable};
use isthmus_xds::{XdsConfig, XdsServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::store::ConfigStore;
use crate::translate::{LocalSettings, TranslateGenerator};

pub use isthmus_identity::{CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT};

#[derive(Debug, Clone, clap::Args)]
pub struct ControlOptions {
    /// Directory of YAML configuration, watched; it must hold this cluster's MeshConfig.
    #[arg(long)]
    pub config_dir: PathBuf,
    /// This cluster's Istio plug-in CA files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// Durable state: the federation log and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// xDS and the CA (IstioCertificateService), gRPC over TLS.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Also serve xDS in plaintext here (Istio's 15010), for proxyless gRPC
    /// clients and debugging on trusted networks.
    #[arg(long)]
    pub plaintext_xds_addr: Option<SocketAddr>,
    /// Admin HTTP: /metrics, /healthz, /readyz, /debug/*.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub admin_addr: SocketAddr,
    /// Bootstrap tokens for the CA, one `TOKEN NAMESPACE/SERVICEACCOUNT` per line.
    #[arg(long)]
    pub bootstrap_tokens: Option<PathBuf>,
    /// Where this cluster's services and Istio resources come from:
    /// `files` (--config-dir only) or `kubernetes` (the API server, merged
    /// with --config-dir, which still holds the MeshConfig).
    #[arg(long, value_enum, default_value = "files")]
    pub source: kubernetes::SourceKind,
    /// kubeconfig for `--source kubernetes` (default: KUBECONFIG,
    /// ~/.kube/config, or the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Raft tick; elections take 10 ticks, heartbeats 2.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub raft_tick: Duration,
    /// How often this cluster renews its registry lease.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub lease_renew: Duration,
    /// A cluster whose lease is not renewed for this long is marked unavailable.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How often RequestAuthentication jwksUri key sets are fetched again
    /// (failed fetches are retried after 5 s).
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub jwks_refresh: Duration,
    /// Serve the sidecar injection webhook here (HTTPS; certificate from the
    /// cluster CA for isthmus-control.istio-system.svc).
    #[arg(long)]
    pub webhook_addr: Option<SocketAddr>,
    /// The proxy image the injector adds to pods.
    #[arg(long, default_value_t = crate::install::options::default_image())]
    pub sidecar_image: String,
    /// Join a running federation with this token (`isthmus federation token
    /// create` on a member); not needed again once this node is a member.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// `HOST:PORT` other members reach this federation node at (default:
    /// MeshConfig `federation.listen`).
    #[arg(long)]
    pub federation_advertise: Option<String>,
    /// Voters the federation grows to by promoting caught-up learners; later
    /// members stay learners.
    #[arg(long, default_value_t = isthmus_federation::membership::DEFAULT_MAX_VOTERS)]
    pub max_voters: usize,
    /// How long `--join-token-file` keeps trying the seeds before giving up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// `--source kubernetes`: the east-west gateway's LoadBalancer Service
    /// (`NAMESPACE/NAME`), whose address is published to the federation
    /// unless the MeshConfig sets one.
    #[arg(long, default_value_t = crate::source::kube::gateway_address::GatewayServiceRef::default())]
    pub eastwest_service: crate::source::kube::gateway_address::GatewayServiceRef,
    /// DNS servers (repeatable) for resolving other clusters' east-west
    /// gateway hostnames; default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream")]
    pub dns_upstream: Vec<SocketAddr>,
}

impl ControlOptions {
    /// Where the federation node keeps its log and snapshots under `--data-dir`.
    pub fn federation_dir(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join("federation")
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::Duration::parse(s).map(|d| d.as_std())
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot load the cluster CA from {dir}: {source}")]
    Ca {
        dir: PathBuf,
        #[source]
        source: isthmus_identity::CaError,
    },
    #[error("identity: {0}")]
    Identity(String),
    #[error("federation: {0}")]
    Federation(String),
    #[error("cannot bind {what} on {addr}: {source}; is another process using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(
    opts: ControlOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let metrics = prometheus::Registry::new();

    // Sources: the first snapshot is complete before anything else starts.
    let store = ConfigStore::new();
    let config_rx = store.subscribe();
    let source = kubernetes::Sources::start(&opts, store).await?;
    let first = config_rx.borrow().clone();
    let mesh = first.mesh_config().ok_or_else(|| {
        AppError::Config(format!(
            "no MeshConfig (apiVersion isthmus.io/v1alpha1) in {}; the control plane needs this cluster's id, network and locality",
            opts.config_dir.display()
        ))
    })?;
    let mesh = mesh.spec.clone();
    if mesh.cluster_id.is_empty() {
        return Err(AppError::Config(
            "MeshConfig.spec.clusterId is empty".into(),
        ));
    }
    let trust_domain = mesh.trust_domain().to_string();

    let id = identity::load(&opts.ca_dir, &trust_domain).await?;
    let (certs, root_pem, intermediate_pem) =
        (&id.certs, id.root_pem.clone(), id.intermediate_pem.clone());
    let (authority_rx, bundle_rx) = (id.authority.clone(), id.bundle.clone());

    // Checked before anything starts, so a bad file fails start-up cleanly.
    let tokens = match &opts.bootstrap_tokens {
        Some(path) => {
            TokenTable::load(path, &trust_domain).map_err(|e| AppError::Identity(e.to_string()))?
        }
        None => TokenTable::default(),
    };

    // Federation node, then this cluster's publisher and lease.
    let federation::Started {
        node,
        admin: federation_admin,
    } = federation::start(
        &opts,
        &mesh,
        certs.subscribe(),
        bundle_rx.clone(),
        &metrics,
        &root_pem,
    )
    .await?;
    let handle = node.handle();
    self::metrics::spawn_federation(handle.clone(), &metrics)?;
    let local = LocalSettings::from_config(&first, id.roots.borrow().to_vec());
    let info = identity::with_ca(
        federation::cluster_info(&mesh, &intermediate_pem, &root_pem),
        &id.authority.borrow(),
    );
    let _ca_reload = id.start_reload(
        &opts.ca_dir,
        &trust_domain,
        &metrics,
        handle.clone(),
        info.clone(),
    )?;
    tokio::spawn(export::run_exporter(
        handle.clone(),
        info,
        config_rx.clone(),
        local.clone(),
        opts.lease_renew,
    ));
    source.spawn_writeback(&mesh.cluster_id, config_rx.clone(), handle.watch_snapshot());
    source.spawn_gateway_address(&opts, &mesh, handle.clone());
    dns::start(
        &first,
        config_rx.clone(),
        handle.clone(),
        mesh.cluster_id.clone(),
        &metrics,
    )
    .await?;
    tokio::spawn(identity::follow_trust_bundle(
        handle.watch_snapshot(),
        id.roots.clone(),
        mesh.cluster_id.clone(),
        id.bundle_tx.clone(),
    ));

    // Translation and xDS. Translation reads the registry with gateway
    // hostnames resolved to addresses (EDS carries IPs only).
    let resolver =
        isthmus_gateway::resolve::Resolver::new(&isthmus_gateway::resolve::ResolverOptions {
            upstream: opts.dns_upstream.clone(),
            timeout: None,
        })
        .map_err(|e| AppError::Config(e.to_string()))?;
    let registry_rx = handle.watch_snapshot();
    let first_view = gateway_names::rewrite(&registry_rx.borrow(), &Default::default());
    let (resolved_tx, resolved_rx) = watch::channel(first_view);
    tokio::spawn(gateway_names::run(registry_rx, resolved_tx, resolver));
    let (inputs_tx, inputs_rx) = watch::channel(Arc::new(inputs::build_with_roots(
        &first,
        &resolved_rx.borrow(),
        &id.roots.borrow(),
    )));
    let generator = Arc::new(TranslateGenerator::new(inputs_rx));
    let (xds, pusher) = XdsServer::new(generator, XdsConfig::default(), &metrics)
        .map_err(|e| AppError::Config(e.to_string()))?;
    let (jwks_tx, jwks_rx) = watch::channel(Arc::default());
    tokio::spawn(jwks::run(
        config_rx.clone(),
        jwks_tx,
        jwks::JwksOptions {
            refresh: opts.jwks_refresh,
            ..Default::default()
        },
    ));
    tokio::spawn(inputs::run(
        config_rx.clone(),
        resolved_rx,
        jwks_rx,
        id.roots.clone(),
        inputs_tx,
        pusher,
    ));

    // CA service next to xDS on the TLS port.
    let ca = CaService::new(
        authority_rx,
        source.authenticator(
            &trust_domain,
            Arc::new(FileAuthenticator::new(&trust_domain, tokens)),
        ),
        CaServiceConfig::default(),
        self::metrics::ca_metrics(&metrics)?,
    );
    let grpc_tls = isthmus_identity::tls::server_config(
        certs.subscribe(),
        bundle_rx.clone(),
        PeerPolicy::trust_domain(&trust_domain),
        false,
        &[b"h2"],
    )
    .map_err(|e| AppError::Identity(e.to_string()))?;
    let grpc_listener = bind("xDS/CA gRPC", opts.grpc_addr).await?;
    let plaintext = match opts.plaintext_xds_addr {
        Some(addr) => Some(bind("plaintext xDS", addr).await?),
        None => None,
    };
    let admin_listener = bind("admin HTTP", opts.admin_addr).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // TLS xDS clients may only ask for their own identity's configuration.
    let xds_tls = xds.with_authorizer(xds_auth::authorizer(&trust_domain));
    let grpc = tonic::transport::Server::builder()
        .add_service(xds_tls.ads())
        .add_service(xds_tls.cds())
        .add_service(xds_tls.eds())
        .add_service(xds_tls.lds())
        .add_service(xds_tls.rds())
        .add_service(xds_tls.sds())
        .add_service(ca.into_server())
        .serve_with_incoming_shutdown(
            isthmus_identity::transport::tls_incoming(grpc_listener, grpc_tls),
            stopped(stop_rx.clone()),
        );
    let grpc_task = tokio::spawn(grpc);
    if let Some(listener) = plaintext {
        let server = tonic::transport::Server::builder()
            .add_service(xds.ads())
            .add_service(xds.cds())
            .add_service(xds.eds())
            .add_service(xds.lds())
            .add_service(xds.rds())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stopped(stop_rx.clone()),
            );
        tokio::spawn(server);
    }
    if let Some(addr) = opts.webhook_addr {
        crate::inject::server::start(
            addr,
            &opts,
            &mesh,
            &root_pem,
            &metrics,
            stopped(stop_rx.clone()),
        )
        .await?;
        source.spawn_ca_bundle(&root_pem);
    }
    let (ready_tx, ready_rx) = watch::channel(false);
    tokio::spawn(admin::serve(
        admin_listener,
        admin::AdminState {
            metrics: metrics.clone(),
            ready: ready_rx,
            xds: xds.clone(),
            federation: handle.clone(),
            config: config_rx,
            federation_admin: Some(federation_admin),
        },
    ));
    let _ = ready_tx.send(true);
    info!(
        cluster = %mesh.cluster_id,
        grpc = %opts.grpc_addr,
        admin = %opts.admin_addr,
        "control plane ready"
    );

    shutdown.await;
    info!("shutting down: closing xDS streams, stopping the federation node");
    let _ = ready_tx.send(false);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc_task).await;
    source.shutdown().await;
    node.stop().await;
    Ok(())
}
