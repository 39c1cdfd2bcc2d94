//! The certificate manager without the network: CA outages, bad CA answers.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use isthmus_identity::manager::{CertManager, CertManagerConfig, CertificateSigner};
use isthmus_identity::{Authority, ClientError, LeafPolicy, SpiffeId};
use tokio::time::Instant;

/// Signs with a real authority, or fails like an unreachable CA when told to.
struct FlakySigner {
    authority: Authority,
    sign_as: SpiffeId,
    down: AtomicBool,
    attempts: AtomicUsize,
    /// Sign a CSR of its own instead of the caller's (a confused or malicious CA).
    substitute: bool,
}

#[tonic::async_trait]
impl CertificateSigner for FlakySigner {
    async fn sign(
        &self,
        csr: String,
        lifetime: Option<Duration>,
    ) -> Result<Vec<String>, ClientError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(ClientError::Status(tonic::Status::unavailable(
                "CA is down",
            )));
        }
        let csr = if self.substitute {
            csr_for(&self.sign_as.to_uri()).1
        } else {
            csr
        };
        self.authority
            .sign_csr(&csr, &self.sign_as, lifetime)
            .map(|l| l.chain_pem)
            .map_err(|e| ClientError::Status(tonic::Status::internal(e.to_string())))
    }
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ca_outage_keeps_serving_the_old_certificate_and_recovers() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let me = id("default", "reviews");
    let signer = Arc::new(FlakySigner {
        authority: pki.authority(LeafPolicy::default()),
        sign_as: me.clone(),
        down: AtomicBool::new(false),
        attempts: AtomicUsize::new(0),
        substitute: false,
    });
    let mut cfg = CertManagerConfig::new(me.clone());
    cfg.requested_lifetime = Some(Duration::from_secs(4));
    cfg.initial_backoff = Duration::from_millis(50);
    cfg.max_backoff = Duration::from_millis(200);
    let manager = CertManager::start(cfg, signer.clone()).unwrap();
    let first = manager.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.identity(), &me);

    // The CA goes away; renewals fail and are retried.
    signer.down.store(true, Ordering::SeqCst);
    let before = signer.attempts.load(Ordering::SeqCst);
    wait_until("three failed renewals", Duration::from_secs(10), || {
        signer.attempts.load(Ordering::SeqCst) >= before + 3
    })
    .await;
    // Still serving the first certificate, which has not expired yet.
    let current = manager.current().unwrap();
    assert_eq!(current.serial(), first.serial());
    assert!(!current.is_expired_at(std::time::SystemTime::now()));

    // The CA comes back: a new certificate replaces the old one.
    signer.down.store(false, Ordering::SeqCst);
    let mut rx = manager.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|c| c.as_ref().is_some_and(|c| c.serial() != first.serial())),
    )
    .await
    .expect("no new certificate after the CA recovered")
    .unwrap();
}

#[tokio::test]
async fn a_chain_for_another_identity_is_never_published() {
    init_crypto();
    let pki = Pki::new(TD, "east");
    let signer = Arc::new(FlakySigner {
        authority: pki.authority(LeafPolicy::default()),
        // A confused CA answering with someone else's identity.
        sign_as: id("default", "someone-else"),
        down: AtomicBool::new(false),
        attempts: AtomicUsize::new(0),
        substitute: true,
    });
    let mut cfg = CertManagerConfig::new(id("default", "reviews"));
    cfg.initial_backoff = Duration::from_millis(20);
    let manager = CertManager::start(cfg, signer.clone()).unwrap();
    wait_until("two attempts", Duration::from_secs(10), || {
        signer.attempts.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert!(manager.current().is_none());
}

#[test]
fn bad_configuration_is_refused() {
    let mut cfg = CertManagerConfig::new(id("default", "reviews"));
    cfg.rotation_fraction = 1.5;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let pki = Pki::new(TD, "east");
    let signer = Arc::new(FlakySigner {
        authority: pki.authority(LeafPolicy::default()),
        sign_as: id("default", "reviews"),
        down: AtomicBool::new(false),
        attempts: AtomicUsize::new(0),
        substitute: false,
    });
    let err = CertManager::start(cfg, signer).err().unwrap();
    assert!(err.to_string().contains("rotation fraction"), "{err}");
}
