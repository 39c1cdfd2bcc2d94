//! Isthmus control plane: configuration model and sources, the config
//! store, `isthmus analyze`, and (later) translation into xDS.

pub mod analyze;
pub mod app;
pub mod config;
pub mod inject;
pub mod install;
pub mod source;
pub mod store;
pub mod translate;
