//! The callers' side: mTLS connections per SPIFFE ID, one HTTP/1.1
//! request, and running one case against a workload to compare the
//! outcome with its expectation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::case::{Case, Expect, Via};
use crate::pki::{tls_config, Pki, API, BATCH_EAST, WEB, WEB_OTHER_TD};
use crate::support::WAIT;
use crate::workload::Workload;

const SNI: &str = "outbound_.9080_._.echo.default.svc.cluster.local";

pub struct Clients {
    configs: BTreeMap<&'static str, Arc<rustls::ClientConfig>>,
}

impl Clients {
    pub fn new(pki: &Pki) -> Self {
        let configs = [WEB, API, BATCH_EAST, WEB_OTHER_TD]
            .into_iter()
            .map(|id| (id, tls_config(pki, id)))
            .collect();
        Clients { configs }
    }

    async fn tls(
        &self,
        id: &str,
        at: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(at).await?;
        let name = rustls::pki_types::ServerName::try_from(SNI).expect("sni");
        tokio_rustls::TlsConnector::from(self.configs[id].clone())
            .connect(name, tcp)
            .await
    }
}

/// Sends one HTTP/1.1 request over `io`; (status, response flags, body).
async fn http1<T>(io: T, c: &Case) -> Result<(u16, String, String), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let mut b = ::http::Request::builder()
        .method(c.method)
        .uri(c.path)
        .header("host", c.host);
    for (k, v) in c.headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::new())).expect("request"))
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let flags = resp
        .headers()
        .get("x-envoy-response-flags")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, flags, String::from_utf8_lossy(&body).into_owned()))
}

/// Runs one case; `Err` describes a mismatch.
pub async fn run(clients: &Clients, w: &Workload, c: &Case) -> Result<(), String> {
    let outcome = match c.via {
        Via::Mtls(id) => {
            let io = clients
                .tls(id, w.http_tls)
                .await
                .map_err(|e| format!("mTLS connect: {e}"))?;
            http1(io, c).await?
        }
        Via::Plain => {
            let io = tokio::net::TcpStream::connect(w.http_plain)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            http1(io, c).await?
        }
        Via::Tcp(id) => {
            let mut io = clients
                .tls(id, w.tcp_tls)
                .await
                .map_err(|e| format!("mTLS connect: {e}"))?;
            let mut out = String::new();
            let r = async {
                io.write_all(b"ping").await?;
                io.shutdown().await?;
                tokio::time::timeout(WAIT, io.read_to_string(&mut out))
                    .await
                    .map_err(|_| std::io::Error::other("timed out"))?
            }
            .await;
            let got = match (r, out.as_str()) {
                (_, "tcp:ping") => Expect::Allow,
                // Denied: closed without a byte from the backend.
                (_, "") => Expect::Deny,
                (r, other) => return Err(format!("unexpected TCP reply {other:?} ({r:?})")),
            };
            return (got == c.expect)
                .then_some(())
                .ok_or_else(|| format!("expected {:?}, connection was {got:?}", c.expect));
        }
    };
    // HEAD responses carry no body.
    let denied_body = if c.method == "HEAD" {
        ""
    } else {
        "RBAC: access denied"
    };
    match (c.expect, outcome) {
        (Expect::Allow, (200, _, _)) => Ok(()),
        (Expect::Deny, (403, flags, body)) if body == denied_body && flags == "RBAC" => Ok(()),
        (e, (status, flags, body)) => Err(format!(
            "expected {e:?}, got {status} flags={flags:?} {body:?}"
        )),
    }
}
