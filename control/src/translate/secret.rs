//! SDS: `ROOTCA`, the federation trust bundle (every root the local cluster
//! trusts plus every root any member cluster publishes) as a validation
//! context. `default` (the proxy's own key and certificate) is produced by
//! the proxy itself and never sent: private keys never leave the workload.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret,
};

use isthmus_xds::Names;

use super::tls::SECRET_ROOTCA;
use super::Inputs;

/// Every distinct root PEM, local ones first, in a stable order.
pub fn trust_bundle(inputs: &Inputs) -> String {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let registry_roots = inputs
        .registry
        .clusters
        .values()
        .flat_map(|c| c.roots_pem.iter());
    for pem in inputs.local.roots_pem.iter().chain(registry_roots) {
        let pem = pem.trim();
        if !pem.is_empty() && seen.insert(pem.to_string()) {
            out.push(pem.to_string());
        }
    }
    let mut bundle = out.join("\n");
    if !bundle.is_empty() {
        bundle.push('\n');
    }
    bundle
}

pub fn secrets(inputs: &Inputs, names: &Names) -> Vec<Secret> {
    if !names.contains(SECRET_ROOTCA) {
        return Vec::new();
    }
    let bundle = trust_bundle(inputs);
    if bundle.is_empty() {
        // An empty validation context would make Envoy reject the secret
        // and every listener using it; better to leave it pending.
        tracing::warn!(
            "no trust roots known yet (local roots empty, registry has none); ROOTCA not served"
        );
        return Vec::new();
    }
    vec![Secret {
        name: SECRET_ROOTCA.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(bundle)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }]
}
