//! The CA's gRPC service, wire-compatible with Istio's
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::{AuthError, Authenticator, CallerContext};
use crate::ca::{Authority, CaError};
use crate::spiffe::SpiffeId;
use crate::transport::TlsConnectInfo;

/// Generated from `proto/ca.proto`.
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}

pub use pb::istio_certificate_service_server::IstioCertificateServiceServer;

/// Per-caller token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        // A workload renews about twice a day; this leaves ample room for restarts.
        Self {
            burst: 10,
            per_second: 1.0,
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The map is touched only for an instant per call, never across an await.
struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<SpiffeId, Bucket>>,
}

const MAX_TRACKED_CALLERS: usize = 100_000;

impl Limiter {
    fn allow(&self, who: &SpiffeId) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_CALLERS && !buckets.contains_key(who) {
            // Full buckets carry no state worth keeping.
            let limit = self.limit;
            buckets.retain(|_, b| refill(b, now, limit) < f64::from(limit.burst));
        }
        let bucket = buckets.entry(who.clone()).or_insert(Bucket {
            tokens: f64::from(self.limit.burst),
            updated: now,
        });
        refill(bucket, now, self.limit);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(bucket: &mut Bucket, now: Instant, limit: RateLimit) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
    bucket.updated = now;
    bucket.tokens
}

/// Counters registered in the control plane's registry.
#[derive(Clone)]
pub struct CaMetrics {
    requests: IntCounterVec,
}

impl CaMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "isthmus_ca_csr_requests_total",
                "Certificate signing requests by outcome (issued, unauthenticated, denied, rate_limited, invalid, failed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self { requests })
    }

    /// Counts one request with `outcome` (public for the control plane's
    /// metric tests).
    pub fn count(&self, outcome: &str) {
        self.requests.with_label_values(&[outcome]).inc();
    }
}

#[derive(Clone, Debug, Default)]
pub struct CaServiceConfig {
    pub rate_limit: RateLimit,
}

/// The signing service. The authority is read from a watch so an intermediate
/// can be replaced (root rotation) without restarting the server.
#[derive(Clone)]
pub struct CaService {
    authority: watch::Receiver<Arc<Authority>>,
    authenticator: Arc<dyn Authenticator>,
    limiter: Arc<Limiter>,
    metrics: CaMetrics,
}

impl CaService {
    pub fn new(
        authority: watch::Receiver<Arc<Authority>>,
        authenticator: Arc<dyn Authenticator>,
        config: CaServiceConfig,
        metrics: CaMetrics,
    ) -> Self {
        Self {
            authority,
            authenticator,
            limiter: Arc::new(Limiter {
                limit: config.rate_limit,
                buckets: Mutex::new(HashMap::new()),
            }),
            metrics,
        }
    }

    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }
}

fn status_for_auth(e: &AuthError) -> Status {
    match e {
        AuthError::ForeignTrustDomain { .. } => Status::permission_denied(e.to_string()),
        AuthError::TokenReviewUnavailable(_) => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::istio_certificate_service_server::IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<pb::IstioCertificateRequest>,
    ) -> Result<Response<pb::IstioCertificateResponse>, Status> {
        let info = request.extensions().get::<TlsConnectInfo>().cloned();
        let remote = info
            .as_ref()
            .and_then(|i| i.remote_addr)
            .or(request.remote_addr());
        let peer_certs = info.as_ref().and_then(|i| i.peer_certs.clone());
        let ctx = CallerContext {
            metadata: request.metadata(),
            peer_certs: peer_certs.as_deref().map(Vec::as_slice),
            remote_addr: remote,
        };
        let caller = match self.authenticator.authenticate(&ctx).await {
            Ok(id) => id,
            Err(e) => {
                self.metrics.count("unauthenticated");
                warn!(remote = ?remote, error = %e, "CSR refused: caller not authenticated");
                return Err(status_for_auth(&e));
            }
        };
        if !self.limiter.allow(&caller) {
            self.metrics.count("rate_limited");
            warn!(%caller, remote = ?remote, "CSR refused: rate limit exceeded");
            return Err(Status::resource_exhausted(format!(
                "too many certificate requests for {caller}; retry later"
            )));
        }
        let req = request.get_ref();
        let requested = match req.validity_duration {
            0 => None,
            s if s > 0 => Some(Duration::from_secs(s.unsigned_abs())),
            s => {
                self.metrics.count("invalid");
                return Err(Status::invalid_argument(format!(
                    "validity_duration must not be negative, got {s}"
                )));
            }
        };
        let authority = Arc::clone(&self.authority.borrow());
        match authority.sign_csr(&req.csr, &caller, requested) {
            Ok(leaf) => {
                self.metrics.count("issued");
                info!(
                    %caller,
                    serial = %leaf.serial,
                    not_after = %leaf.not_after,
                    remote = ?remote,
                    "issued workload certificate"
                );
                Ok(Response::new(pb::IstioCertificateResponse {
                    cert_chain: leaf.chain_pem,
                }))
            }
            Err(e) => {
                let (outcome, status) = match &e {
                    CaError::CsrIdentityMismatch { .. } | CaError::ForeignTrustDomain { .. } => {
                        ("denied", Status::permission_denied(e.to_string()))
                    }
                    CaError::BadCsr(_) | CaError::CsrRequestsCa => {
                        ("invalid", Status::invalid_argument(e.to_string()))
                    }
                    CaError::CaExpired(_) => ("failed", Status::failed_precondition(e.to_string())),
                    _ => ("failed", Status::internal(e.to_string())),
                };
                self.metrics.count(outcome);
                warn!(%caller, remote = ?remote, error = %e, "CSR refused");
                Err(status)
            }
        }
    }
}

/// Serves the CA over TLS on `listener` until `shutdown` completes. The TLS
/// configuration should not require client certificates (bootstrap callers
/// have none) but verify any that are presented; see [`crate::tls::server_config`].
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: CaService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(crate::transport::tls_incoming(listener, tls), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_enforces_burst_per_caller() {
        let limiter = Limiter {
            limit: RateLimit {
                burst: 3,
                per_second: 0.001,
            },
            buckets: Mutex::new(HashMap::new()),
        };
        let a = SpiffeId::new("cluster.local", "default", "a").unwrap();
        let b = SpiffeId::new("cluster.local", "default", "b").unwrap();
        assert!((0..3).all(|_| limiter.allow(&a)));
        assert!(!limiter.allow(&a));
        assert!(limiter.allow(&b));
    }
}
