//! The control plane's own identity: its cluster's intermediate CA, loaded
//! from Istio's plug-in files, and the certificate it serves and peers with,
//! issued in-process and rotated like any workload's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::{
    files::load_authority, Authority, AuthoritySigner, CertManager, CertManagerConfig, LeafPolicy,
    SpiffeId, TrustBundle,
};
use tokio::sync::watch;

use super::{AppError, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT};

pub struct ControlIdentity {
    pub authority: watch::Receiver<Arc<Authority>>,
    /// Kept so the authority can later be replaced (root rotation).
    pub authority_tx: watch::Sender<Arc<Authority>>,
    pub certs: CertManager,
    pub root_pem: String,
    pub intermediate_pem: String,
    /// Starts as our own root; the registry adds the other clusters' roots.
    pub bundle_tx: watch::Sender<Arc<TrustBundle>>,
    pub bundle: watch::Receiver<Arc<TrustBundle>>,
}

pub async fn load(ca_dir: &Path, trust_domain: &str) -> Result<ControlIdentity, AppError> {
    let authority =
        load_authority(ca_dir, trust_domain, LeafPolicy::default()).map_err(|source| {
            AppError::Ca {
                dir: ca_dir.to_path_buf(),
                source,
            }
        })?;
    let root_pem = authority.root_pem().to_string();
    let intermediate_pem = authority.intermediate_pem().to_string();
    let (authority_tx, authority_rx) = watch::channel(Arc::new(authority));
    let own_id = SpiffeId::new(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT)
        .map_err(|e| AppError::Identity(e.to_string()))?;
    let certs = CertManager::start(
        CertManagerConfig::new(own_id.clone()),
        Arc::new(AuthoritySigner::new(authority_rx.clone(), own_id)),
    )
    .map_err(|e| AppError::Identity(e.to_string()))?;
    certs
        .wait_ready(Duration::from_secs(10))
        .await
        .map_err(|e| AppError::Identity(e.to_string()))?;
    let bundle = TrustBundle::from_pem(&root_pem, "root-cert.pem")
        .map_err(|e| AppError::Identity(e.to_string()))?;
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(bundle));
    Ok(ControlIdentity {
        authority: authority_rx,
        authority_tx,
        certs,
        root_pem,
        intermediate_pem,
        bundle_tx,
        bundle: bundle_rx,
    })
}
