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
}

/// Serves until the listener fails or the task is aborted. `/status/NNN`
/// answers with that status code (for retry and outlier tests).
pub async fn serve(listener: TcpListener, me: Identity) -> std::io::Result<()> {
    let me = Arc::new(me);
    loop {
        let (stream, peer) = listener.accept().await?;
        let me = me.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(req, me.clone(), peer));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    me: Arc<Identity>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    // Drain the body so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
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
}
