//! The webhook's HTTPS endpoint. Its certificate is signed by this
//! cluster's intermediate (the plug-in CA files the control plane already
//! loads) for the Service's DNS names, so the webhook configuration's
//! `caBundle` is simply the trust domain's root. It is re-issued at half its
//! lifetime; handshakes always use the current one.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::review::AdmissionReview;
use super::InjectConfig;
use crate::app::CONTROL_NAMESPACE;
use crate::install::proxy::CONTROL_SERVICE;
use crate::install::webhook::INJECT_PATH;

/// The API server sends at most a few MiB per request.
const MAX_BODY: usize = 4 << 20;
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read {path}: {source}; the webhook certificate is signed with the cluster CA's plug-in files")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot sign the webhook certificate with the cluster CA: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("the webhook certificate's key is unusable: {0}")]
    Key(#[from] rustls::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// DNS names the API server may use for the Service.
pub fn dns_names() -> Vec<String> {
    let base = format!("{CONTROL_SERVICE}.{CONTROL_NAMESPACE}");
    vec![
        format!("{base}.svc"),
        format!("{base}.svc.cluster.local"),
        base,
    ]
}

/// Signs serving certificates for the webhook with the cluster's intermediate.
pub struct WebhookSigner {
    issuer: Issuer<'static, KeyPair>,
    /// The intermediate's chain up to the root (cert-chain.pem), sent after the leaf.
    chain: Vec<CertificateDer<'static>>,
}

impl WebhookSigner {
    /// From Istio's plug-in files in `ca_dir`.
    pub fn load(ca_dir: &Path) -> Result<Self, WebhookError> {
        let paths = isthmus_identity::files::PluginPaths::in_dir(ca_dir);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| WebhookError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let key = KeyPair::from_pem(&read(&paths.ca_key)?)?;
        let ca_cert = read(&paths.ca_cert)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, key)?;
        let chain_pem = match read(&paths.cert_chain) {
            Ok(c) => c,
            // Without cert-chain.pem the intermediate itself is the chain.
            Err(_) => ca_cert,
        };
        let chain =
            isthmus_identity::pem::certs_from_pem(&chain_pem, "cert-chain.pem").map_err(|e| {
                WebhookError::Read {
                    path: paths.cert_chain.clone(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        Ok(Self { issuer, chain })
    }

    /// A fresh key and a leaf for [`dns_names`], valid for `lifetime`.
    pub fn issue(&self, lifetime: Duration) -> Result<Arc<CertifiedKey>, WebhookError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(dns_names())?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{CONTROL_SERVICE}.{CONTROL_NAMESPACE}.svc"),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + lifetime;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut certs = vec![leaf.der().clone()];
        certs.extend(self.chain.iter().cloned());
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der)?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }
}

#[derive(Debug)]
struct CurrentCert(watch::Receiver<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().clone())
    }
}

#[derive(Clone)]
struct Metrics {
    requests: prometheus::IntCounterVec,
}

impl Metrics {
    fn new(registry: &prometheus::Registry) -> Result<Self, WebhookError> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "isthmus_injection_requests_total",
                "Sidecar injection webhook requests by result (injected, skipped, denied, error).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        Ok(Self { requests })
    }
}

fn respond(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    respond(
        status,
        serde_json::json!({ "error": message })
            .to_string()
            .into_bytes(),
    )
}

async fn handle(
    req: Request<Incoming>,
    config: Arc<InjectConfig>,
    metrics: Metrics,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != INJECT_PATH {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "the injector serves POST /inject",
        ));
    }
    if req.method() != Method::POST {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview",
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            metrics.requests.with_label_values(&["error"]).inc();
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {e}"),
            ));
        }
    };
    let input: AdmissionReview = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            metrics.requests.with_label_values(&["error"]).inc();
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("not an AdmissionReview v1: {e}"),
            ));
        }
    };
    let output = match super::review(&config, &input) {
        Ok(o) => o,
        Err(e) => {
            metrics.requests.with_label_values(&["error"]).inc();
            return Ok(error(StatusCode::BAD_REQUEST, &e.to_string()));
        }
    };
    let result = match &output.response {
        Some(r) if !r.allowed => "denied",
        Some(r) if r.patch.is_some() => "injected",
        _ => "skipped",
    };
    metrics.requests.with_label_values(&[result]).inc();
    Ok(match serde_json::to_vec(&output) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    })
}

/// Issues the first certificate (so a CA problem fails start-up), then
/// serves until `shutdown` resolves, re-issuing at half the lifetime.
pub fn spawn(
    listener: TcpListener,
    signer: WebhookSigner,
    config: InjectConfig,
    registry: &prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, WebhookError> {
    let first = signer.issue(LIFETIME)?;
    let (cert_tx, cert_rx) = watch::channel(first);
    let metrics = Metrics::new(registry)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(CurrentCert(cert_rx)));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let config = Arc::new(config);

    let renew = tokio::spawn(async move {
        let mut wait = LIFETIME / 2;
        loop {
            tokio::time::sleep(wait).await;
            match signer.issue(LIFETIME) {
                Ok(c) => {
                    cert_tx.send_replace(c);
                    wait = LIFETIME / 2;
                }
                // The current certificate still has up to half its life left.
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the webhook certificate; retrying in an hour");
                    wait = Duration::from_secs(3600);
                }
            }
        }
    });

    Ok(tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let config = config.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let service = hyper::service::service_fn(move |req| {
                    handle(req, config.clone(), metrics.clone())
                });
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
                }
            });
        }
        renew.abort();
    }))
}

/// The control plane's hook: binds `addr` and serves the injector for this
/// cluster's MeshConfig, signing with the CA files in `--ca-dir`.
pub async fn start(
    addr: std::net::SocketAddr,
    opts: &crate::app::ControlOptions,
    mesh: &crate::config::MeshConfigSpec,
    root_pem: &str,
    registry: &prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::app::AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| crate::app::AppError::Bind {
            what: "injection webhook",
            addr,
            source,
        })?;
    let signer = WebhookSigner::load(&opts.ca_dir)
        .map_err(|e| crate::app::AppError::Identity(e.to_string()))?;
    let config = InjectConfig::from_mesh(mesh, &opts.sidecar_image, root_pem);
    spawn(listener, signer, config, registry, shutdown)
        .map_err(|e| crate::app::AppError::Identity(e.to_string()))?;
    tracing::info!(%addr, "sidecar injection webhook serving");
    Ok(())
}
