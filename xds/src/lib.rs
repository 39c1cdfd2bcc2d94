//! The Envoy xDS v3 protocol server of Isthmus.
//!
//! Generic over where resources come from: the control plane implements
//! [`Generator`] (translation of config and registry into Envoy resources)
//! and announces input changes through the [`Pusher`]; this crate does the
//! protocol: ADS state-of-the-world and delta, the per-type services,
//! nonce/version/ACK/NACK bookkeeping, subscriptions and wildcards, node
//! identity, debounced pushes computed once per proxy shape, and per-proxy
//! status and metrics.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo(generator: Arc<dyn isthmus_xds::Generator>) -> Result<(), Box<dyn std::error::Error>> {
//! let registry = prometheus::Registry::new();
//! let (xds, pusher) = isthmus_xds::XdsServer::new(generator, Default::default(), &registry)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15010").await?;
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .add_service(xds.ads())
//!         .add_service(xds.cds())
//!         .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
//! );
//! // After the generator's input changed to version 7:
//! pusher.push(7, isthmus_xds::PushScope::Full);
//! # Ok(()) }
//! ```

mod ads;
mod cache;
mod delta;
mod generator;
mod held;
mod inbound;
mod intern;
mod metrics;
mod outbound;
mod proxy;
mod push;
mod resource;
mod same;
mod server;
mod service;
mod sotw;
mod status;
mod stream;
mod types;

pub use ads::AdsServer;
pub use generator::{GenerateError, Generator, NameSet, Names};
pub use proxy::{Locality, NodeType, Proxy, ProxyError, ProxyRole};
pub use push::{DebounceConfig, PushScope, Pusher};
pub use resource::{set_version, Resource, ResourceMap, SetDigest};
pub use server::{XdsConfig, XdsError, XdsServer};
pub use service::{Authorizer, DeltaStream, SotwStream, XdsService};
pub use status::{Nack, ProxyStatus, StreamKind, SyncState, TypeStatus};
pub use types::TypeUrl;
