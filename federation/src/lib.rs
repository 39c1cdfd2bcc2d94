//! Isthmus federation: the Raft-replicated registry of every cluster's
//! exported services.
//!
//! - [`model`]: the data clusters publish; [`state`]: the state machine with
//!   revisions and the event history behind the watch API.
//! - [`node`]: one thread drives raft-rs over durable [`storage`]
//!   (raft-engine plus checksummed snapshot files, see [`snapfile`]).
//! - [`transport`]: in-memory with faults, and QUIC with mutual TLS.
//! - [`handle::Handle`]: what the control plane calls.
#![forbid(unsafe_code)]
// rust-protobuf messages have private fields, so struct-update syntax is not
// available for them and field assignment after `default()` is the only way.
#![allow(clippy::field_reassign_with_default)]

pub mod command;
pub mod config;
pub mod handle;
mod lease;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod node;
pub mod recovery;
mod slog_bridge;
pub mod snapfile;
pub mod state;
pub mod storage;
pub mod transport;
pub mod witness;

#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use command::{Command, PublishDiff};
pub use config::{LeaseConfig, NodeConfig};
pub use handle::{FederationError, Handle, NodeStatus, PeerStatus, Role, WatchError, WatchStream};
pub use metrics::Metrics;
pub use node::{Node, StartError};
pub use state::{Event, EventKind, LeaseState, RegistrySnapshot, ServiceMap};
pub use transport::Transport;
pub use witness::{run_witness, Witness, WitnessConfig, WitnessError};
