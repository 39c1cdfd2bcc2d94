//! Peers in the `net` namespace that the support module does not provide:
//! the client sidecar's plain TCP listener and a minimal HTTP/1.1 server
//! outside the registry.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::resources::{addr, tcp_proxy_filter};

pub(crate) fn plain_tcp_listener(
    name: &str,
    at: SocketAddr,
    cluster: &str,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
    Listener {
        name: name.into(),
        address: Some(addr(at)),
        filter_chains: vec![FilterChain {
            filters: vec![tcp_proxy_filter(cluster)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A minimal HTTP/1.1 server outside the registry: 200 "outside" to
/// anything, closing after each response; counts requests.
pub(crate) struct PlainHttp {
    hits: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PlainHttp {
    pub(crate) async fn start(at: SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpListener::bind(at).await.expect("bind http");
        let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = sock.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\noutside")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Self { hits, task }
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for PlainHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
