//! Resolves RequestAuthentication `jwksUri`s into JWK Sets the translator
//! inlines (`local_jwks`), as Istio's pilot does: the data plane never
//! fetches keys, and every proxy gets the same keys at the same version.
//!
//! One task owns the cache: it fetches every URI the config references
//! (HTTPS with the system roots, or plain HTTP), refreshes them on a period,
//! retries failures sooner, keeps the last good set when a fetch fails or
//! returns something that is not a JWK Set, and publishes the map through a
//! `watch` channel only when it changed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::config::validate::jwks::validate_jwks;
use crate::store::ConfigSnapshot;
use crate::translate::authn::ResolvedJwks;

/// Larger key sets are refused (public JWKS documents are a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct JwksOptions {
    /// How often a fetched set is fetched again (Istio: 20 minutes).
    pub refresh: Duration,
    /// How soon a failed fetch is retried.
    pub retry: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(20 * 60),
            retry: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{uri}: not a valid URI: {why}")]
    Uri { uri: String, why: String },
    #[error("{uri}: request failed: {why}; check that the control plane can reach it (egress, DNS, TLS roots)")]
    Request { uri: String, why: String },
    #[error("{uri}: no answer within {0:?}", .timeout)]
    Timeout { uri: String, timeout: Duration },
    #[error("{uri}: HTTP {status}")]
    Status { uri: String, status: u16 },
    #[error("{uri}: {why}")]
    Body { uri: String, why: String },
    #[error("cannot set up the HTTPS client: {0}")]
    Tls(String),
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

fn client() -> Result<HttpsClient, JwksError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| JwksError::Tls(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Every `jwksUri` of every RequestAuthentication (inline `jwks` wins when
/// both are set, so those are not fetched).
pub fn referenced_uris(config: &ConfigSnapshot) -> BTreeSet<String> {
    config
        .request_authentications()
        .flat_map(|ra| &ra.spec.jwt_rules)
        .filter(|r| r.jwks.is_none())
        .filter_map(|r| r.jwks_uri.clone())
        .collect()
}

async fn fetch(client: &HttpsClient, uri: &str, timeout: Duration) -> Result<String, JwksError> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| JwksError::Uri {
            uri: uri.into(),
            why: e.to_string(),
        })?;
    let req = http::Request::get(parsed)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| JwksError::Uri {
            uri: uri.into(),
            why: e.to_string(),
        })?;
    let work = async {
        let resp = client.request(req).await.map_err(|e| JwksError::Request {
            uri: uri.into(),
            why: e.to_string(),
        })?;
        if !resp.status().is_success() {
            return Err(JwksError::Status {
                uri: uri.into(),
                status: resp.status().as_u16(),
            });
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| JwksError::Body {
                uri: uri.into(),
                why: format!("reading the body: {e}"),
            })?
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).map_err(|_| JwksError::Body {
            uri: uri.into(),
            why: "the body is not UTF-8".into(),
        })?;
        validate_jwks(&text).map_err(|why| JwksError::Body {
            uri: uri.into(),
            why,
        })?;
        Ok(text)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| JwksError::Timeout {
            uri: uri.into(),
            timeout,
        })?
}

/// Runs until the config channel closes.
pub async fn run(
    mut config: watch::Receiver<Arc<ConfigSnapshot>>,
    out: watch::Sender<Arc<ResolvedJwks>>,
    opts: JwksOptions,
) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "jwksUri resolution disabled; RequestAuthentication rules with jwksUri reject every token");
            return;
        }
    };
    let mut cache: ResolvedJwks = out.borrow().as_ref().clone();
    loop {
        let uris = referenced_uris(&config.borrow_and_update());
        cache.retain(|uri, _| uris.contains(uri));
        let mut failed = false;
        for uri in &uris {
            match fetch(&client, uri, opts.timeout).await {
                Ok(text) => {
                    if cache.get(uri) != Some(&text) {
                        tracing::info!(%uri, "JWKS fetched");
                    }
                    cache.insert(uri.clone(), text);
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(error = %e, kept_last_good = cache.contains_key(uri), "JWKS fetch failed");
                }
            }
        }
        out.send_if_modified(|current| {
            if **current == cache {
                false
            } else {
                *current = Arc::new(cache.clone());
                true
            }
        });
        let wait = if failed {
            opts.retry.min(opts.refresh)
        } else {
            opts.refresh
        };
        tokio::select! {
            r = config.changed() => if r.is_err() { return; },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    fn snapshot(yaml: &str) -> ConfigSnapshot {
        ConfigSnapshot::from_text(std::path::Path::new("t.yaml"), yaml)
            .unwrap_or_else(|errors| panic!("{errors:?}"))
    }

    /// Serves whatever `body` holds at the moment; `None` answers 500.
    async fn jwks_server(
        body: watch::Receiver<Option<String>>,
    ) -> (
        std::net::SocketAddr,
        Arc<AtomicU64>,
        tokio::task::JoinHandle<()>,
    ) {
        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = sock.accept().await {
                let (body, h) = (body.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let current = body.borrow().clone();
                        async move {
                            let mut resp = http::Response::new(Full::new(Bytes::from(
                                current.clone().unwrap_or_default(),
                            )));
                            if current.is_none() {
                                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr, hits, task)
    }

    fn key_set(n: &str) -> String {
        format!(r#"{{"keys":[{{"kty":"RSA","kid":"{n}","e":"AQAB","n":"{n}"}}]}}"#)
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<ResolvedJwks>>,
        what: &str,
        f: impl Fn(&ResolvedJwks) -> bool,
    ) {
        let r = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|m| f(m))).await;
        assert!(matches!(r, Ok(Ok(_))), "timed out waiting for {what}");
    }

    #[tokio::test]
    async fn fetches_refreshes_and_keeps_the_last_good_set() {
        let (body_tx, body_rx) = watch::channel(Some(key_set("one")));
        let (addr, hits, server) = jwks_server(body_rx).await;
        let uri = format!("http://{addr}/jwks.json");
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: foo\nspec:\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwksUri: {uri}\n"
        );
        let (config_tx, config_rx) = watch::channel(Arc::new(snapshot(&yaml)));
        let (out_tx, mut out_rx) = watch::channel(Arc::<ResolvedJwks>::default());
        let opts = JwksOptions {
            refresh: Duration::from_millis(100),
            retry: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
        };
        let task = tokio::spawn(run(config_rx, out_tx, opts));

        wait_for(&mut out_rx, "the first fetch", |m| {
            m.get(&uri) == Some(&key_set("one"))
        })
        .await;
        // Rotation at the issuer shows up on the next refresh.
        body_tx.send_replace(Some(key_set("two")));
        wait_for(&mut out_rx, "the refresh", |m| {
            m.get(&uri) == Some(&key_set("two"))
        })
        .await;
        // Failures (500, then a body that is not a JWK Set) keep the last good set.
        body_tx.send_replace(None);
        let before = hits.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hits.load(Ordering::SeqCst) < before + 3 {
            assert!(tokio::time::Instant::now() < deadline, "no retries seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        body_tx.send_replace(Some("<html>not json</html>".into()));
        let before = hits.load(Ordering::SeqCst);
        while hits.load(Ordering::SeqCst) < before + 2 {
            assert!(tokio::time::Instant::now() < deadline, "no retries seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(out_rx.borrow().get(&uri), Some(&key_set("two")));
        // A URI no longer referenced is dropped.
        config_tx.send_replace(Arc::new(snapshot("")));
        wait_for(&mut out_rx, "the URI to be dropped", |m| m.is_empty()).await;
        task.abort();
        server.abort();
    }
}
