//! The mesh trust bundle as the control plane pushes it (SDS `ROOTCA`),
//! published for what runs beside the listeners: the proxy's CA client and
//! its xDS connection must follow a root rotation too (see
//! `isthmus_identity::ca_trust`).

use std::sync::Arc;

use isthmus_identity::TrustBundle;
use tokio::sync::watch;

use crate::config::{SecretConfig, ROOT_CA_SECRET};
use crate::state::ResourceSet;

/// Receives the roots of the last accepted `ROOTCA` secret (empty until the
/// first one arrives).
pub type MeshRootsSender = watch::Sender<Arc<TrustBundle>>;

/// The bundle of an accepted `ROOTCA` secret; `None` when it has no usable root
/// (an accepted secret was validated already, so this is only defensive).
fn bundle_of(secret: &SecretConfig) -> Option<TrustBundle> {
    let mut bundle = TrustBundle::new();
    for der in &secret.roots {
        if let Err(e) = bundle.add_der(der.clone().into()) {
            tracing::warn!(error = %e, "a ROOTCA root is unusable; keeping the previous mesh bundle");
            return None;
        }
    }
    (!bundle.is_empty()).then_some(bundle)
}

/// Follows the accepted resources and publishes `ROOTCA` whenever its roots
/// change. A removed `ROOTCA` keeps the last bundle: losing it from a
/// configuration must not lock the proxy out of its control plane.
pub(crate) async fn publish(mut resources: watch::Receiver<Arc<ResourceSet>>, tx: MeshRootsSender) {
    loop {
        let next = resources
            .borrow_and_update()
            .secrets
            .get(ROOT_CA_SECRET)
            .and_then(bundle_of);
        if let Some(next) = next {
            tx.send_if_modified(|cur| {
                if **cur == next {
                    false
                } else {
                    *cur = Arc::new(next);
                    true
                }
            });
        }
        tokio::select! {
            r = resources.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn with_rootca(roots: Vec<Vec<u8>>) -> Arc<ResourceSet> {
        let mut set = ResourceSet::default();
        set.secrets.insert(
            ROOT_CA_SECRET.to_string(),
            SecretConfig {
                name: ROOT_CA_SECRET.to_string(),
                root_count: roots.len(),
                roots,
                san_matchers: Vec::new(),
                certificate: None,
            },
        );
        Arc::new(set)
    }

    async fn next_len(rx: &mut watch::Receiver<Arc<TrustBundle>>) -> usize {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .expect("a ROOTCA change is published")
            .unwrap();
        rx.borrow_and_update().len()
    }

    #[tokio::test]
    async fn publishes_rootca_changes_and_keeps_the_last_bundle_when_it_disappears() {
        let (r1, r2) = (root("R1"), root("R2"));
        let (set_tx, set_rx) = watch::channel(Arc::new(ResourceSet::default()));
        let (tx, mut rx) = watch::channel(Arc::new(TrustBundle::new()));
        tokio::spawn(publish(set_rx, tx));

        set_tx.send_replace(with_rootca(vec![r1.clone()]));
        assert_eq!(next_len(&mut rx).await, 1);
        set_tx.send_replace(with_rootca(vec![r1, r2.clone()]));
        assert_eq!(next_len(&mut rx).await, 2);
        set_tx.send_replace(with_rootca(vec![r2.clone()]));
        assert_eq!(next_len(&mut rx).await, 1);

        // Gone from the configuration, or the same roots again: nothing published.
        set_tx.send_replace(Arc::new(ResourceSet::default()));
        set_tx.send_replace(with_rootca(vec![r2]));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), rx.changed())
                .await
                .is_err()
        );
        assert_eq!(rx.borrow().len(), 1);
    }
}
