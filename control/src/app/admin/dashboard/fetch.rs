//! Plain-HTTP GETs with a deadline: the control plane scraping its proxies'
//! `/metrics`, and `isthmus dashboard` polling control planes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{url}` is not a plain http:// URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("reading the answer of {url}: {source}")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: http::StatusCode,
        message: String,
    },
}

/// A pooled HTTP/1.1 client; cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // Short, so one dead proxy costs a round at most its timeout.
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        Fetcher {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

/// `host:port` or `http://host:port[/base]`, as `http://host:port[/base]`
/// without a trailing slash.
pub fn base_url(addr: &str) -> Result<String, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: addr.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = addr.trim();
    let url = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("the admin ports speak plain http://"));
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| bad("no host"))?;
    Ok(format!(
        "http://{authority}{}",
        uri.path().trim_end_matches('/')
    ))
}

/// The client's error with its causes: hyper-util's own message alone
/// ("client error (Connect)") does not say what failed.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

impl Fetcher {
    /// The body of a 2xx answer to GET `url` within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Bytes, FetchError> {
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| FetchError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        let exchange = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| FetchError::Connect {
                    url: url.to_string(),
                    reason: causes(&e),
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|source| FetchError::Body {
                    url: url.to_string(),
                    source,
                })?
                .to_bytes();
            Ok::<_, FetchError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout {
                url: url.to_string(),
                timeout,
            })??;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
                message: text.trim().chars().take(200).collect(),
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_accept_host_port_and_refuse_https() {
        assert_eq!(
            base_url("127.0.0.1:15014").unwrap(),
            "http://127.0.0.1:15014"
        );
        assert_eq!(
            base_url("http://cp.example:15014/").unwrap(),
            "http://cp.example:15014"
        );
        assert!(base_url("https://cp.example:15014").is_err());
        assert!(base_url("http://").is_err());
        assert!(base_url("not a url").is_err());
    }
}
