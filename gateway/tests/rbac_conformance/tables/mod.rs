//! The conformance case tables, one policy set per entry, grouped by the
//! policy feature they exercise and kept in their original order.

mod actions;
mod requests;
mod scope;
mod sources;

use crate::case::Case;

/// A policy set: its name, the policies' YAML (ports as `{HTTP_PORT}`,
/// `{PLAIN_PORT}`, `{TCP_PORT}`), and the cases run against it.
pub type Set = (&'static str, String, Vec<Case>);

/// Every set, in order.
pub fn all() -> Vec<Set> {
    [
        actions::sets(),
        sources::sets(),
        requests::sets(),
        scope::sets(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
