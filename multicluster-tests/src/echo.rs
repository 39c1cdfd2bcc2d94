//! The sample workload: an HTTP echo server that says which cluster, zone and
//! version answered, so scenario tests and the demo can see where requests land.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Who this instance is; every answer carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub service: String,
    pub cluster: String,
    pub zone: String,
    pub version: String,
}

/// The JSON body of every echo answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(flatten)]
    pub identity: Identity,
    pub method: String,
    pub path: String,
    /// The peer address the echo server saw (its sidecar, when there is one).
    pub peer: String,
    /// What the called service answered, when this instance calls one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Box<Answer>>,
}

impl Answer {
    /// Who answered last in the chain of calls: where the request landed.
    pub fn last(&self) -> &Identity {
        match &self.upstream {
            Some(u) => u.last(),
            None => &self.identity,
        }
    }
}

/// The service an echo instance calls on every request (through its
/// sidecar's outbound listener), like productpage calling reviews.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub target: SocketAddr,
    /// The `Host` header, e.g. `reviews`.
    pub host: String,
}

/// Serves until the listener fails or the task is aborted. `/status/NNN`
/// answers with that status code (for retry and outlier tests).
pub async fn serve(listener: TcpListener, me: Identity) -> std::io::Result<()> {
    serve_calling(listener, me, None).await
}

/// [`serve`], calling `upstream` first on every request: its answer is
/// embedded, and its failure answers 502 with the reason.
pub async fn serve_calling(
    listener: TcpListener,
    me: Identity,
    upstream: Option<Upstream>,
) -> std::io::Result<()> {
    let me = Arc::new(me);
    let upstream = Arc::new(upstream);
    loop {
        let (stream, peer) = listener.accept().await?;
        let (me, upstream) = (me.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                answer(req, me.clone(), upstream.clone(), peer)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    me: Arc<Identity>,
    upstream: Arc<Option<Upstream>>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // Drain the body so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    let called = match upstream.as_ref() {
        Some(u) => {
            let mut cfg = crate::load::LoadConfig::new(u.target, &u.host, 1.0);
            cfg.path = path.clone();
            match tokio::time::timeout(cfg.timeout, crate::load::request_answer(&cfg)).await {
                Ok(Ok(a)) => Some(Box::new(a)),
                Ok(Err(e)) => return Ok(bad_gateway(format!("{}: {e}", u.host))),
                Err(_) => return Ok(bad_gateway(format!("{}: timeout", u.host))),
            }
        }
        None => None,
    };
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let body = Answer {
        identity: (*me).clone(),
        method,
        path,
        peer: peer.to_string(),
        upstream: called,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(json)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn bad_gateway(reason: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reason)));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;

    #[tokio::test]
    async fn answers_with_identity_and_requested_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Identity {
            service: "reviews".into(),
            cluster: "us-east".into(),
            zone: "us-east-1a".into(),
            version: "v2".into(),
        };
        let server = tokio::spawn(serve(listener, me.clone()));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .get(format!("http://{addr}/hello").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let a: Answer = serde_json::from_slice(&body).unwrap();
        assert_eq!(a.identity, me);
        assert_eq!(a.path, "/hello");
        let resp = client
            .get(format!("http://{addr}/status/503").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        server.abort();
    }

    #[tokio::test]
    async fn a_calling_instance_embeds_the_upstream_answer_or_fails_with_502() {
        let reviews_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reviews_addr = reviews_l.local_addr().unwrap();
        let id = |service: &str, cluster: &str| Identity {
            service: service.into(),
            cluster: cluster.into(),
            zone: "z".into(),
            version: "v2".into(),
        };
        let reviews = tokio::spawn(serve(reviews_l, id("reviews", "us-east")));
        let page_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let page_addr = page_l.local_addr().unwrap();
        let up = Upstream {
            target: reviews_addr,
            host: "reviews".into(),
        };
        let page = tokio::spawn(serve_calling(
            page_l,
            id("productpage", "us-west"),
            Some(up),
        ));
        let cfg = crate::load::LoadConfig::new(page_addr, "productpage", 1.0);
        let a = crate::load::request_answer(&cfg).await.unwrap();
        assert_eq!(a.identity.service, "productpage");
        assert_eq!(a.last(), &id("reviews", "us-east"));
        let landing = crate::load::request(&cfg).await.unwrap();
        assert_eq!(landing.cluster, "us-east");

        reviews.abort();
        let _ = reviews.await;
        let err = crate::load::request(&cfg).await.unwrap_err();
        assert_eq!(err, crate::load::Failure::Status(502));
        page.abort();
    }
}
