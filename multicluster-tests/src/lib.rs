//! Process-level harness for running several Isthmus clusters on one machine,
//! with fault controls. Used by the scenario tests in `tests/` and by
//! `isthmus demo`.
//!
//! ```text
//! let fed = Federation::start_for_tests(FederationSpec::bookinfo()).await?;
//! fed.wait_ready(READY_LIMIT).await?;
//! let load = Load::start(fed.load("us-west", "productpage-v1", "reviews", 100.0)?);
//! fed.kill_cluster("us-east").await?;
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod benchdoc;
pub mod binary;
pub mod cluster;
pub mod echo;
pub mod error;
pub mod faultproxy;
pub mod federation;
pub mod ingress;
pub mod load;
pub mod process;
pub mod ready;
pub mod render;
pub mod rotation;
pub mod scenario;
pub mod setup;
pub mod spec;
pub mod stats;
pub mod tunnel;
pub mod udpproxy;
pub mod wait;
pub mod witness;

pub use cluster::{Cluster, Part};
pub use error::HarnessError;
pub use faultproxy::{FaultProxy, Faults};
pub use federation::{Federation, READY_LIMIT};
pub use load::{Landing, Load, LoadConfig, Outcome};
pub use ready::RegistryView;
pub use spec::{
    Block, ClusterSpec, ConfigSource, FederationSpec, ServiceSpec, Timing, WorkloadSpec,
};
pub use stats::{around_fault, FaultReport, Summary};
