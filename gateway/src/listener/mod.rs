//! Listening sockets and filter chain selection.

pub mod chain;
pub mod drain;
pub mod manager;
pub mod original_dst;
pub mod sniff;

pub use manager::{ListenerError, ListenerManager};
