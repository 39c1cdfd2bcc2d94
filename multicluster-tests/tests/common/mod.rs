//! Shared set-up of the scenario tests.
#![allow(dead_code)]

use std::time::Duration;

use isthmus_multicluster_tests::{Federation, FederationSpec, HarnessError, READY_LIMIT};

/// Requests per second of the scenario loads. 100 keeps two shared cores
/// well below saturation with a TLS handshake per request; raise it with
/// ISTHMUS_SCENARIO_RATE on a bigger machine.
pub fn rate() -> f64 {
    std::env::var("ISTHMUS_SCENARIO_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100.0)
}

/// Starts `spec`, waits until everything is ready and productpage's calls
/// to reviews land in `expect`.
pub async fn start(mut spec: FederationSpec, expect: &str) -> Result<Federation, HarnessError> {
    // ISTHMUS_TEST_LOG: the children's log filter, e.g. `info,isthmus_federation=debug`.
    if let Ok(filter) = std::env::var("ISTHMUS_TEST_LOG") {
        spec.log_filter = filter;
    }
    let fed = Federation::start_for_tests(spec).await?;
    fed.wait_ready(READY_LIMIT).await?;
    fed.wait_lands("us-west", "productpage-v1", "reviews", expect, READY_LIMIT)
        .await?;
    Ok(fed)
}

pub const SECOND: Duration = Duration::from_secs(1);
