//! What a workload trusts when it talks to its own control plane (the CA
//! and xDS port), and when it renews because that trust changed.
//!
//! A root rotation moves the control plane's serving certificate to the new
//! root as soon as its intermediate is re-issued. A workload that only
//! trusted the roots returned with its last certificate would then refuse
//! the control plane until it renewed, and it cannot renew without talking
//! to the control plane: it would be locked out for good. So the workload
//! also trusts the mesh bundle its control plane pushes (SDS `ROOTCA`),
//! which carries a new root from the first step of the rotation on, the way
//! Istio's agent trusts the root ConfigMap istiod keeps current. And when
//! that bundle changes, the workload renews (after a random delay, so a
//! whole cluster does not renew at once), so its certificate and the roots
//! that come with it follow the rotation without waiting for the next
//! scheduled rotation.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::bundle::TrustBundle;
use crate::manager::{CertWatch, RenewHandle};
use crate::verify::BundleWatch;

/// The control plane trust of a workload: the roots that came with its
/// latest certificate (`initial`, the operator's bootstrap root file, until
/// there is one), plus every root of the pushed mesh bundle.
pub fn control_plane_trust(
    initial: &TrustBundle,
    latest: Option<&TrustBundle>,
    mesh: &TrustBundle,
) -> TrustBundle {
    let mut next = match latest {
        Some(issued) if !issued.is_empty() => issued.clone(),
        _ => initial.clone(),
    };
    next.merge(mesh);
    next
}

/// The roots the CA returned with the current certificate, if it is there
/// and they are usable.
fn issued_roots(own: &CertWatch) -> Option<TrustBundle> {
    let roots = own.borrow().as_ref().map(|c| c.roots().to_vec())?;
    let mut bundle = TrustBundle::new();
    for r in roots {
        if let Err(e) = bundle.add_der(r) {
            warn!(error = %e, "the CA returned an unusable root; ignoring the roots of this certificate");
            return None;
        }
    }
    Some(bundle)
}

/// A live [`control_plane_trust`]: recomputed whenever the certificate or
/// the mesh bundle changes. Needs a tokio runtime; the task ends when every
/// receiver is gone.
pub fn follow_control_plane_trust(
    initial: TrustBundle,
    mut own: CertWatch,
    mut mesh: BundleWatch,
) -> BundleWatch {
    let first = control_plane_trust(&initial, issued_roots(&own).as_ref(), &mesh.borrow());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut mesh_open = true;
        loop {
            tokio::select! {
                r = own.changed() => if r.is_err() { return },
                r = mesh.changed(), if mesh_open => if r.is_err() { mesh_open = false; continue },
                _ = tx.closed() => return,
            }
            let next = control_plane_trust(
                &initial,
                issued_roots(&own).as_ref(),
                &mesh.borrow_and_update(),
            );
            if **tx.borrow() != next {
                info!(roots = ?next.subjects(), "trust in the control plane follows the roots of the latest certificate and the mesh bundle");
                tx.send_replace(Arc::new(next));
            }
        }
    });
    rx
}

/// Renews the certificate of `renew` whenever the mesh bundle changes (a root
/// added or retired), after a random delay of up to `spread`. The first
/// bundle received is not a change. Needs a tokio runtime; the task ends
/// when the bundle's sender is gone.
pub fn renew_on_bundle_change(mut mesh: BundleWatch, renew: RenewHandle, spread: Duration) {
    tokio::spawn(async move {
        let mut known = mesh.borrow_and_update().clone();
        while mesh.changed().await.is_ok() {
            let current = mesh.borrow_and_update().clone();
            if current.is_empty() || *current == *known {
                continue;
            }
            if known.is_empty() {
                known = current;
                continue;
            }
            let delay = spread.mul_f64(rand::random::<f64>());
            info!(
                roots = ?current.subjects(),
                renew_in_ms = delay.as_millis() as u64,
                "the mesh trust bundle changed; renewing the certificate"
            );
            tokio::time::sleep(delay).await;
            // The renewal covers whatever changed during the delay too.
            known = mesh.borrow_and_update().clone();
            renew.renew_now();
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::client::ClientError;
    use crate::manager::{CertManager, CertManagerConfig, CertificateSigner};
    use crate::spiffe::SpiffeId;

    fn root(cn: &str) -> TrustBundle {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TrustBundle::from_pem(&cert.pem(), cn).unwrap()
    }

    fn union(a: &TrustBundle, b: &TrustBundle) -> TrustBundle {
        let mut u = a.clone();
        u.merge(b);
        u
    }

    #[test]
    fn trust_is_the_latest_roots_or_the_bootstrap_root_plus_the_mesh_bundle() {
        let (boot, issued, mesh) = (root("boot"), root("issued"), root("mesh"));
        assert_eq!(
            control_plane_trust(&boot, None, &TrustBundle::new()),
            boot,
            "before any certificate: the bootstrap root alone"
        );
        assert_eq!(control_plane_trust(&boot, None, &mesh), union(&boot, &mesh));
        assert_eq!(
            control_plane_trust(&boot, Some(&issued), &mesh),
            union(&issued, &mesh),
            "once a certificate came with roots, the bootstrap root is no longer needed"
        );
        assert_eq!(
            control_plane_trust(&boot, Some(&TrustBundle::new()), &mesh),
            union(&boot, &mesh),
            "a certificate without roots keeps the bootstrap root"
        );
    }

    #[tokio::test]
    async fn trust_follows_a_pushed_root_without_a_new_certificate() {
        let (r1, r2) = (root("R1"), root("R2"));
        let (_own_tx, own) = watch::channel(None);
        let (mesh_tx, mesh) = watch::channel(Arc::new(TrustBundle::new()));
        let mut trust = follow_control_plane_trust(r1.clone(), own, mesh);
        assert_eq!(**trust.borrow(), r1);
        mesh_tx.send_replace(Arc::new(union(&r1, &r2)));
        tokio::time::timeout(Duration::from_secs(5), trust.changed())
            .await
            .expect("the new root is trusted")
            .unwrap();
        assert_eq!(**trust.borrow(), union(&r1, &r2));
    }

    /// Counts requests and refuses them all; a long backoff means only
    /// `renew_now` causes another attempt.
    struct Counting(Arc<AtomicUsize>);

    #[tonic::async_trait]
    impl CertificateSigner for Counting {
        async fn sign(&self, _: String, _: Option<Duration>) -> Result<Vec<String>, ClientError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(ClientError::EmptyChain)
        }
    }

    async fn wait_count(count: &AtomicUsize, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} certificate requests, saw {}",
                count.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_changed_mesh_bundle_renews_once_and_the_first_bundle_does_not() {
        let count = Arc::new(AtomicUsize::new(0));
        let mut cfg = CertManagerConfig::new(SpiffeId::new("td.local", "ns", "sa").unwrap());
        cfg.initial_backoff = Duration::from_secs(3600);
        cfg.max_backoff = Duration::from_secs(3600);
        let manager = CertManager::start(cfg, Arc::new(Counting(Arc::clone(&count)))).unwrap();
        wait_count(&count, 1).await;

        let (r1, r2) = (root("R1"), root("R2"));
        let (mesh_tx, mesh) = watch::channel(Arc::new(TrustBundle::new()));
        renew_on_bundle_change(mesh, manager.renew_handle(), Duration::from_millis(50));
        mesh_tx.send_replace(Arc::new(r1.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "the first bundle is not a change"
        );

        mesh_tx.send_replace(Arc::new(union(&r1, &r2)));
        wait_count(&count, 2).await;
        // The same roots again, e.g. a re-sent ROOTCA: no renewal.
        mesh_tx.send_replace(Arc::new(union(&r1, &r2)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        // Retiring a root is a change too.
        mesh_tx.send_replace(Arc::new(r2));
        wait_count(&count, 3).await;
    }
}
