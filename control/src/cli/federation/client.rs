//! A minimal client of the control plane's admin port for the federation
//! commands (plain HTTP, as the admin port speaks).

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

pub async fn call(
    admin: &str,
    method: http::Method,
    path_and_query: &str,
    timeout: Duration,
) -> anyhow::Result<Answer> {
    let base = admin.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let url = format!("{base}{path_and_query}");
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("`{admin}` is not a valid admin address"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "`{admin}`: the admin port speaks plain http://"
    );
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let exchange = async {
        let resp = client.request(req).await.with_context(|| {
            format!("cannot reach the control plane's admin port at {url}; is `isthmus control` running, and is --admin its --admin-addr?")
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of {url}"))?
            .to_bytes();
        anyhow::Ok(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within {timeout:?}"))?
}

/// Fails with the server's message unless it answered 2xx.
pub fn ok(answer: Answer, what: &str) -> anyhow::Result<Answer> {
    if answer.status.is_success() {
        Ok(answer)
    } else {
        anyhow::bail!(
            "{what}: the control plane answered {}: {}",
            answer.status,
            answer.text()
        )
    }
}
