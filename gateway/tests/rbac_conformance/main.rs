//! AuthorizationPolicy conformance through a real proxy: Istio YAML →
//! the control plane's selection and RBAC translation → the gateway's xDS
//! (real ADS, real listeners on loopback, mTLS with leaves signed by the
//! identity crate's CA for several SPIFFE IDs, one of them from another
//! cluster's intermediate and one from another trust domain) → echo
//! backends. Each case asserts allowed / 403 `RBAC: access denied` / closed.
//!
//! One gateway per distinct policy set; many requests per gateway.
//!
//! Modules: `pki` (CAs, callers, client TLS), `workload` (translation,
//! listeners, gateway), `case` (the case model), `client` (requests and
//! one case's check), `env` (one policy set's run), `tables` (the cases).

#[path = "../support/mod.rs"]
mod support;
#[path = "../translate_support/mod.rs"]
mod translate_support;

mod case;
mod client;
mod env;
mod pki;
mod tables;
mod workload;

use case::Case;
use env::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_conformance() {
    let env = Env::new().await;
    let mut failures = Vec::new();
    let mut total = 0usize;
    let sets: Vec<(&str, String, Vec<Case>)> = tables::all();
    for (name, yaml, cases) in &sets {
        total += cases.len();
        failures.extend(env.check(name, yaml, cases).await);
    }
    assert!(total >= 60, "only {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
