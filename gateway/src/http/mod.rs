//! HTTP in the data plane (hyper 1): the connection manager (`server`), the
//! pure routing decision (`router`), forwarding with retries, timeouts and
//! mirrors (`forward`), upstream connection pools (`pool`), and local
//! replies, header edits and the per-request access log (`respond`), and the
//! connection manager's request, stream-idle and connection-idle timeouts
//! (`timeouts`), the request-head size limit (`head_limit`), and the ALPN
//! offered for HTTP over mesh mTLS (`mesh_alpn`).

pub mod forward;
pub mod head_limit;
pub mod mesh_alpn;
mod mirror;
pub mod pool;
pub mod respond;
mod retry;
pub mod router;
pub mod server;
mod streams;
pub mod timeouts;
mod upgrade;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// Envoy response flags for the access log and `response_flags` label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags(Vec<&'static str>);

impl Flags {
    pub fn add(&mut self, f: &'static str) {
        if !self.0.contains(&f) {
            self.0.push(f);
        }
    }

    pub fn contains(&self, f: &str) -> bool {
        self.0.contains(&f)
    }
}

impl std::fmt::Display for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&self.0.join(","))
        }
    }
}
