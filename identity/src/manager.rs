//! The workload certificate manager: one owner task generates the key locally
//! (it never leaves the process), sends a CSR, publishes the result on a
//! `watch`, and rotates at a fraction of the lifetime with jitter. When the CA
//! is unreachable the current certificate keeps being served until it expires
//! while retries back off exponentially.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, SanType};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::ca::{generate_key, CaError, KeyAlgorithm};
use crate::client::ClientError;
use crate::spiffe::SpiffeId;
use crate::workload::{WorkloadCert, WorkloadCertError};

/// The current certificate; `None` until the first one is issued.
pub type CertWatch = watch::Receiver<Option<Arc<WorkloadCert>>>;

/// Whoever turns a CSR into a chain: the gRPC [`crate::client::CaClient`], or a fake in tests.
#[tonic::async_trait]
pub trait CertificateSigner: Send + Sync + 'static {
    /// Returns the PEM chain, leaf first.
    async fn sign(
        &self,
        csr_pem: String,
        lifetime: Option<Duration>,
    ) -> Result<Vec<String>, ClientError>;
}

/// Signs with a CA in this very process: the control plane uses it for its
/// own serving certificate (xDS and CA port), so that certificate rotates like
/// any workload's without a network round trip.
pub struct AuthoritySigner {
    authority: watch::Receiver<Arc<crate::ca::Authority>>,
    identity: SpiffeId,
}

impl AuthoritySigner {
    pub fn new(authority: watch::Receiver<Arc<crate::ca::Authority>>, identity: SpiffeId) -> Self {
        Self {
            authority,
            identity,
        }
    }
}

#[tonic::async_trait]
impl CertificateSigner for AuthoritySigner {
    async fn sign(
        &self,
        csr_pem: String,
        lifetime: Option<Duration>,
    ) -> Result<Vec<String>, ClientError> {
        let authority = Arc::clone(&self.authority.borrow());
        Ok(authority
            .sign_csr(&csr_pem, &self.identity, lifetime)?
            .chain_pem)
    }
}

#[derive(Clone, Debug)]
pub struct CertManagerConfig {
    pub identity: SpiffeId,
    pub key_algorithm: KeyAlgorithm,
    /// Asked of the CA; `None` takes the CA's default (24 h).
    pub requested_lifetime: Option<Duration>,
    /// Rotate when this fraction of the lifetime has passed (Istio: 0.5).
    pub rotation_fraction: f64,
    /// Rotation happens up to this fraction of the rotation delay earlier, at
    /// random, so a fleet started together does not renew together.
    pub jitter_fraction: f64,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl CertManagerConfig {
    pub fn new(identity: SpiffeId) -> Self {
        Self {
            identity,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            requested_lifetime: None,
            rotation_fraction: 0.5,
            jitter_fraction: 0.1,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("rotation fraction must be in (0, 1), got {0}")]
    BadFraction(f64),
    #[error("jitter fraction must be in [0, 1), got {0}")]
    BadJitter(f64),
    #[error("{0} keys cannot be generated locally with the ring provider; use ECDSA or Ed25519 for workloads")]
    UnsupportedKey(KeyAlgorithm),
    #[error(
        "no certificate within {0:?}; check the CA address, the bootstrap token and the CA's logs"
    )]
    NotReady(Duration),
    #[error("cannot generate the key or CSR: {0}")]
    Csr(#[from] CaError),
    #[error("cannot build the CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CA refused or failed: {0}")]
    Ca(#[from] ClientError),
    #[error(transparent)]
    Issued(#[from] WorkloadCertError),
}

/// Asks a [`CertManager`] for a new certificate now.
#[derive(Clone)]
pub struct RenewHandle(Arc<Notify>);

impl RenewHandle {
    pub fn renew_now(&self) {
        self.0.notify_one();
    }
}

pub struct CertManager {
    certs: CertWatch,
    renew: Arc<Notify>,
    task: JoinHandle<()>,
}

impl CertManager {
    /// Starts the owner task; the first certificate is requested at once.
    pub fn start(
        config: CertManagerConfig,
        signer: Arc<dyn CertificateSigner>,
    ) -> Result<Self, ManagerError> {
        Self::start_with(config, |_| signer)
    }

    /// Like [`CertManager::start`], but the signer is built from the manager's
    /// own watch, so a CA client can present the current certificate to
    /// authenticate its renewals.
    pub fn start_with(
        config: CertManagerConfig,
        make_signer: impl FnOnce(CertWatch) -> Arc<dyn CertificateSigner>,
    ) -> Result<Self, ManagerError> {
        if !(config.rotation_fraction > 0.0 && config.rotation_fraction < 1.0) {
            return Err(ManagerError::BadFraction(config.rotation_fraction));
        }
        if !(config.jitter_fraction >= 0.0 && config.jitter_fraction < 1.0) {
            return Err(ManagerError::BadJitter(config.jitter_fraction));
        }
        if config.key_algorithm == KeyAlgorithm::Rsa {
            return Err(ManagerError::UnsupportedKey(config.key_algorithm));
        }
        let (tx, rx) = watch::channel(None);
        let signer = make_signer(rx.clone());
        let renew = Arc::new(Notify::new());
        let task = tokio::spawn(run(config, signer, tx, Arc::clone(&renew)));
        Ok(Self {
            certs: rx,
            renew,
            task,
        })
    }

    /// Asks for a new certificate now instead of at the next rotation (the
    /// issuing CA changed, e.g. an intermediate was re-issued under a new
    /// root). The current certificate keeps serving until the new one arrives.
    pub fn renew_now(&self) {
        self.renew.notify_one();
    }

    /// A cloneable handle to [`CertManager::renew_now`] for other tasks.
    pub fn renew_handle(&self) -> RenewHandle {
        RenewHandle(Arc::clone(&self.renew))
    }

    pub fn subscribe(&self) -> CertWatch {
        self.certs.clone()
    }

    pub fn current(&self) -> Option<Arc<WorkloadCert>> {
        self.certs.borrow().clone()
    }

    /// Waits for the first certificate.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Arc<WorkloadCert>, ManagerError> {
        let mut rx = self.certs.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|c| c.is_some())).await;
        match waited {
            Ok(Ok(cert)) => cert.clone().ok_or(ManagerError::NotReady(timeout)),
            _ => Err(ManagerError::NotReady(timeout)),
        }
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        // Configurations holding a CertWatch keep serving the last certificate.
        self.task.abort();
    }
}

async fn run(
    config: CertManagerConfig,
    signer: Arc<dyn CertificateSigner>,
    tx: watch::Sender<Option<Arc<WorkloadCert>>>,
    renew: Arc<Notify>,
) {
    let mut backoff = config.initial_backoff;
    let mut next_attempt = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_attempt) => {}
            _ = renew.notified() => {
                info!(identity = %config.identity, "certificate renewal requested");
                backoff = config.initial_backoff;
            }
        }
        match issue_once(&config, signer.as_ref()).await {
            Ok(cert) => {
                let delay = refresh_delay(&cert, &config);
                info!(
                    identity = %cert.identity(),
                    serial = cert.serial(),
                    expires_in_s = remaining(&cert).as_secs_f64(),
                    next_rotation_in_s = delay.as_secs_f64(),
                    "workload certificate issued"
                );
                tx.send_replace(Some(Arc::new(cert)));
                backoff = config.initial_backoff;
                next_attempt = Instant::now() + delay;
            }
            Err(e) => {
                let current = tx.borrow().clone();
                let mut wait = with_jitter(backoff, 0.2);
                match current {
                    Some(cur) if !cur.is_expired_at(SystemTime::now()) => {
                        // Retry well before the old certificate runs out.
                        let left = remaining(&cur);
                        wait = wait.min(left / 4).max(Duration::from_millis(20));
                        warn!(
                            identity = %config.identity,
                            error = %e,
                            retry_in_ms = wait.as_millis() as u64,
                            current_expires_in_s = left.as_secs_f64(),
                            "certificate renewal failed; still serving the current certificate"
                        );
                    }
                    Some(_) => error!(
                        identity = %config.identity,
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "certificate renewal failed and the current certificate has EXPIRED; peers will refuse it"
                    ),
                    None => warn!(
                        identity = %config.identity,
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "initial certificate request failed"
                    ),
                }
                backoff = backoff.saturating_mul(2).min(config.max_backoff);
                next_attempt = Instant::now() + wait;
            }
        }
    }
}

async fn issue_once(
    config: &CertManagerConfig,
    signer: &dyn CertificateSigner,
) -> Result<WorkloadCert, ManagerError> {
    let key = generate_key(config.key_algorithm)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(config.identity.to_uri().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let chain = signer.sign(csr, config.requested_lifetime).await?;
    Ok(WorkloadCert::from_issued(
        &config.identity,
        key.serialize_der(),
        key.public_key_raw(),
        &chain,
    )?)
}

fn remaining(cert: &WorkloadCert) -> Duration {
    cert.not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// When to renew: `fraction` of the lifetime as seen from when we received the
/// certificate (its notBefore is back-dated for clock skew), minus jitter.
fn refresh_delay(cert: &WorkloadCert, config: &CertManagerConfig) -> Duration {
    let lifetime = cert
        .not_after()
        .duration_since(cert.received_at())
        .unwrap_or_default();
    let base = lifetime.mul_f64(config.rotation_fraction);
    let jitter = base.mul_f64(config.jitter_fraction * rand::random::<f64>());
    base.saturating_sub(jitter)
}

fn with_jitter(d: Duration, fraction: f64) -> Duration {
    d.mul_f64(1.0 + fraction * (rand::random::<f64>() * 2.0 - 1.0))
}
