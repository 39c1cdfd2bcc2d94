//! Listening sockets and filter chain selection.

pub mod chain;
pub mod drain;
pub mod manager;

pub use manager::{ListenerError, ListenerManager};
