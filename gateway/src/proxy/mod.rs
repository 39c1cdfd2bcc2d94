//! Per-connection proxying. One generic path serves every mode, because the
//! mode is expressed by configuration exactly as in Envoy:
//! - sidecar outbound: plaintext chain, `tcp_proxy` to a cluster whose
//!   transport socket originates mTLS with the mesh SNI;
//! - east-west passthrough: `tls_inspector` + `server_names` chains without
//!   a transport socket, `tcp_proxy` to a cluster without one, so the
//!   buffered ClientHello and everything after it are forwarded unchanged;
//! - sidecar inbound: chain with a `DownstreamTlsContext` (mTLS
//!   termination), `tcp_proxy` to the local application; PERMISSIVE is a
//!   second `raw_buffer` chain on the same listener.

pub mod connection;
pub mod socket;
pub mod splice;
pub mod tcp;
pub mod upstream;

use std::any::Any;

use tokio::io::{AsyncRead, AsyncWrite};

/// Any bidirectional byte stream; `Any` lets the relay find plain sockets
/// to splice (`splice::plain`).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Any {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Any> Io for T {}

pub type BoxIo = Box<dyn Io>;
