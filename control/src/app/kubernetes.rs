//! `isthmus control --source kubernetes`: the API server as the
//! configuration source (merged with `--config-dir`, which still holds the
//! MeshConfig), the TokenReview authenticator for the CA, and the MCS
//! write-back. In `files` mode (the default) nothing here touches a
//! Kubernetes client, so the demo and file deployments need no kubeconfig.

use std::collections::BTreeSet;
use std::sync::Arc;

use isthmus_federation::{Handle, RegistrySnapshot};
use isthmus_identity::Authenticator;
use tokio::sync::watch;

use super::{AppError, ControlOptions};
use crate::config::MeshConfigSpec;
use crate::source::file::{FileSource, FileSourceHandle};
use crate::source::kube::gateway_address::{self, Configured, GatewayAddress};
use crate::source::kube::{
    self as kube_source, KubeSource, KubeSourceHandle, TokenReviewAuthenticator, TokenReviewConfig,
    WriteBack, WriteBackConfig,
};
use crate::store::{ConfigSnapshot, ConfigStore};

/// Where a cluster's own configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SourceKind {
    /// Only the `--config-dir` YAML files.
    #[default]
    Files,
    /// The Kubernetes API server, plus the `--config-dir` files.
    Kubernetes,
}

/// The running configuration sources.
pub struct Sources {
    file: FileSourceHandle,
    kube: Option<(::kube::Client, KubeSourceHandle)>,
}

impl Sources {
    /// Starts the sources; returns after `store` holds a complete first
    /// snapshot.
    pub async fn start(opts: &ControlOptions, store: ConfigStore) -> Result<Sources, AppError> {
        let files = FileSource::new(vec![opts.config_dir.clone()]);
        match opts.source {
            SourceKind::Files => {
                let file = files
                    .start(store)
                    .await
                    .map_err(|e| AppError::Config(e.to_string()))?;
                Ok(Sources { file, kube: None })
            }
            SourceKind::Kubernetes => {
                let file_store = ConfigStore::new();
                let base = file_store.subscribe();
                let file = files
                    .start(file_store)
                    .await
                    .map_err(|e| AppError::Config(e.to_string()))?;
                let client = kube_source::client(opts.kubeconfig.as_deref())
                    .await
                    .map_err(|e| AppError::Config(e.to_string()))?;
                let handle = KubeSource::new(client.clone())
                    .with_base(base)
                    .start(store)
                    .await
                    .map_err(|e| AppError::Config(e.to_string()))?;
                Ok(Sources {
                    file,
                    kube: Some((client, handle)),
                })
            }
        }
    }

    /// The CA's authenticator: in Kubernetes, service-account tokens are
    /// reviewed by the API server; certificates renew as in file mode.
    pub fn authenticator(
        &self,
        trust_domain: &str,
        file: Arc<dyn Authenticator>,
    ) -> Arc<dyn Authenticator> {
        match &self.kube {
            Some((client, _)) => Arc::new(TokenReviewAuthenticator::new(
                client.clone(),
                trust_domain,
                TokenReviewConfig::new(trust_domain),
                file,
            )),
            None => file,
        }
    }

    /// Starts the MCS write-back (ServiceExport conditions, ServiceImports)
    /// in Kubernetes mode.
    pub fn spawn_writeback(
        &self,
        cluster_id: &str,
        config: watch::Receiver<Arc<ConfigSnapshot>>,
        registry: watch::Receiver<Arc<RegistrySnapshot>>,
    ) {
        if let Some((client, handle)) = &self.kube {
            let namespaces: watch::Receiver<Arc<BTreeSet<String>>> = handle.namespaces();
            let wb = WriteBack::new(client.clone(), WriteBackConfig::new(cluster_id));
            tokio::spawn(wb.run(config, registry, namespaces));
        }
    }

    /// Publishes the east-west gateway's LoadBalancer address (from the
    /// Service `--eastwest-service`) as this cluster's gateway address, for
    /// the fields the MeshConfig leaves empty.
    pub fn spawn_gateway_address(
        &self,
        opts: &ControlOptions,
        mesh: &MeshConfigSpec,
        handle: Handle,
    ) {
        let Some((client, _)) = &self.kube else {
            return;
        };
        let gw = mesh.gateways.clone().unwrap_or_default();
        let configured = Configured {
            tcp: gw.east_west.as_deref().is_some_and(|a| !a.is_empty()),
            quic: gw.east_west_quic.as_deref().is_some_and(|a| !a.is_empty()),
        };
        if configured.tcp && configured.quic {
            tracing::info!("the MeshConfig sets both east-west addresses; not discovering them from the gateway Service");
            return;
        }
        let (tx, rx) = watch::channel(GatewayAddress::default());
        tokio::spawn(gateway_address::discover(
            client.clone(),
            opts.eastwest_service.clone(),
            tx,
        ));
        tokio::spawn(gateway_address::publish(
            handle,
            mesh.cluster_id.clone(),
            configured,
            rx,
        ));
    }

    /// Keeps the injector's MutatingWebhookConfiguration's caBundle set to
    /// `ca_pem` (the root the webhook's serving certificate chains to).
    pub fn spawn_ca_bundle(&self, ca_pem: &str) -> watch::Sender<String> {
        let (tx, rx) = watch::channel(ca_pem.to_string());
        if let Some((client, _)) = &self.kube {
            tokio::spawn(crate::inject::ca_bundle::run(
                client.clone(),
                crate::install::webhook::WEBHOOK_CONFIGURATION.to_string(),
                rx,
            ));
        }
        tx
    }

    pub async fn shutdown(self) {
        if let Some((_, handle)) = self.kube {
            handle.shutdown().await;
        }
        self.file.shutdown().await;
    }
}
