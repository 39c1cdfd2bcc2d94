//! The control plane's own identity: its cluster's intermediate CA, loaded
//! from Istio's plug-in files and reloaded when they change, and the
//! certificate it serves and peers with, issued in-process and rotated like
//! any workload's.
//!
//! After a reload ([`isthmus_identity::reload`]) one task ([`follow_authority`])
//! carries the change everywhere: this cluster's roots (SDS `ROOTCA` and the
//! trust bundle of the CA port and the federation transport), the control
//! plane's own certificate (re-issued at once from the new intermediate; open
//! connections keep the certificate they were made with), and the
//! intermediate and roots this cluster publishes in the federation registry.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::model::ClusterInfo;
use isthmus_federation::{Handle, RegistrySnapshot};
use isthmus_identity::reload::{self, ReloadConfig, ReloadMetrics, Reloader};
use isthmus_identity::{
    files::load_authority, Authority, AuthoritySigner, CertManager, CertManagerConfig, LeafPolicy,
    RenewHandle, SpiffeId, TrustBundle,
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{AppError, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT};

/// This cluster's trusted roots (root-cert.pem), PEM each.
pub type RootsWatch = watch::Receiver<Arc<Vec<String>>>;

pub struct ControlIdentity {
    pub authority: watch::Receiver<Arc<Authority>>,
    /// Replaced by the reloader when the plug-in files change.
    pub authority_tx: watch::Sender<Arc<Authority>>,
    pub certs: CertManager,
    /// The signing root (the one the intermediate chains to) at start-up.
    pub root_pem: String,
    pub intermediate_pem: String,
    /// Every root of root-cert.pem; follows reloads once
    /// [`ControlIdentity::start_reload`] runs.
    pub roots: RootsWatch,
    roots_tx: watch::Sender<Arc<Vec<String>>>,
    /// Starts as our own roots; the registry adds the other clusters' roots.
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
    let roots = authority.roots_pem().to_vec();
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
    let bundle = own_bundle(&roots).map_err(|e| AppError::Identity(e.to_string()))?;
    let (bundle_tx, bundle_rx) = watch::channel(Arc::new(bundle));
    let (roots_tx, roots_rx) = watch::channel(Arc::new(roots));
    Ok(ControlIdentity {
        authority: authority_rx,
        authority_tx,
        certs,
        root_pem,
        intermediate_pem,
        roots: roots_rx,
        roots_tx,
        bundle_tx,
        bundle: bundle_rx,
    })
}

fn own_bundle(roots: &[String]) -> Result<TrustBundle, isthmus_identity::CaError> {
    TrustBundle::from_pems(roots.iter().map(|p| ("root-cert.pem", p.as_str())))
}

/// What this cluster publishes about its CA: the intermediate and every
/// root it trusts.
pub fn with_ca(mut info: ClusterInfo, authority: &Authority) -> ClusterInfo {
    info.intermediate_pem = authority.intermediate_pem().to_string();
    info.roots_pem = authority.roots_pem().to_vec();
    info
}

/// Everything that runs while the control plane serves; dropping it stops
/// watching the CA directory.
pub struct Rotation {
    _reloader: Reloader,
}

impl ControlIdentity {
    /// Watches `ca_dir` and carries every accepted change to the roots,
    /// the control plane's certificate and the registry entry `info`.
    pub fn start_reload(
        &self,
        ca_dir: &Path,
        trust_domain: &str,
        registry: &prometheus::Registry,
        handle: Handle,
        info: ClusterInfo,
    ) -> Result<Rotation, AppError> {
        let metrics = ReloadMetrics::new(registry)
            .map_err(|e| AppError::Identity(format!("CA reload metrics: {e}")))?;
        let reloader = reload::spawn(
            ReloadConfig::new(ca_dir, trust_domain, LeafPolicy::default()),
            self.authority_tx.clone(),
            Some(metrics),
        )
        .map_err(|e| AppError::Identity(e.to_string()))?;
        tokio::spawn(follow_authority(
            self.authority.clone(),
            self.roots_tx.clone(),
            self.certs.renew_handle(),
            handle,
            info,
        ));
        Ok(Rotation {
            _reloader: reloader,
        })
    }
}

/// Owner of the consequences of an authority swap (see the module docs).
async fn follow_authority(
    mut authority: watch::Receiver<Arc<Authority>>,
    roots: watch::Sender<Arc<Vec<String>>>,
    renew: RenewHandle,
    handle: Handle,
    info: ClusterInfo,
) {
    authority.borrow_and_update();
    while authority.changed().await.is_ok() {
        let current = authority.borrow_and_update().clone();
        roots.send_if_modified(|r| {
            let next = current.roots_pem().to_vec();
            if **r == next {
                false
            } else {
                *r = Arc::new(next);
                true
            }
        });
        renew.renew_now();
        let next = with_ca(info.clone(), &current);
        // Registering replaces this cluster's entry; retried until a quorum
        // accepts it or a newer authority supersedes it.
        loop {
            match handle.register_cluster(next.clone()).await {
                Ok(_) => {
                    info!(
                        cluster = %next.id,
                        roots = next.roots_pem.len(),
                        "published the new intermediate and roots in the federation registry"
                    );
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "cannot publish the new CA in the federation registry yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if authority.has_changed().unwrap_or(false) {
                        break;
                    }
                }
            }
        }
    }
}

/// The trust bundle is this cluster's roots plus every root any member
/// cluster publishes: adding a root in one cluster reaches every proxy of
/// the federation (the first step of a root rotation), and retiring it
/// everywhere removes it. Our own roots stay in even when the registry is
/// unreachable, so an outage never shrinks the bundle below them.
pub async fn follow_trust_bundle(
    mut registry: watch::Receiver<Arc<RegistrySnapshot>>,
    mut own: RootsWatch,
    cluster_id: String,
    bundle: watch::Sender<Arc<TrustBundle>>,
) {
    loop {
        let snap = registry.borrow_and_update().clone();
        let own_roots = own.borrow_and_update().clone();
        let mut pems: Vec<(String, String)> = own_roots
            .iter()
            .map(|p| (p.clone(), "this cluster's root-cert.pem".to_string()))
            .collect();
        for c in snap.clusters.values() {
            // Our own registry entry may lag behind a reload.
            if c.id == cluster_id {
                continue;
            }
            for pem in &c.roots_pem {
                pems.push((pem.clone(), format!("root published by cluster {}", c.id)));
            }
        }
        match TrustBundle::from_pems(pems.iter().map(|(p, w)| (w.as_str(), p.as_str()))) {
            Ok(next) => {
                if !bundle.borrow().fingerprints().eq(next.fingerprints()) {
                    info!(roots = next.len(), subjects = ?next.subjects(), "trust bundle changed");
                    bundle.send_replace(Arc::new(next));
                }
            }
            Err(e) => {
                warn!(error = %e, "a root published in the registry is invalid; keeping the current trust bundle")
            }
        }
        tokio::select! {
            r = registry.changed() => if r.is_err() { return },
            r = own.changed() => if r.is_err() { return },
        }
    }
}
