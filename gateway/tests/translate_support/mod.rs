//! Inputs for the tests that run the control plane's real translation into
//! this data plane: Istio YAML parsed into a config snapshot, and proxies'
//! xDS nodes. Apart from `support` so that only these tests link the
//! control plane.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use isthmus_control::store::ConfigSnapshot;

/// `yaml` as the control plane would hold it after reading `file`; any
/// error in the fixture fails the test.
pub fn config(file: &str, yaml: &str) -> ConfigSnapshot {
    ConfigSnapshot::from_text(Path::new(file), yaml)
        .unwrap_or_else(|errors| panic!("{file} has errors: {errors:?}"))
}

/// A proxy's xDS node: string `metadata` fields plus `LABELS`, as the
/// translation reads them.
pub fn node(id: &str, metadata: &[(&str, &str)], labels: &[(&str, &str)]) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let labels = Struct {
        fields: labels.iter().map(|(k, v)| (k.to_string(), s(v))).collect(),
    };
    let mut fields: HashMap<String, Value> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), s(v)))
        .collect();
    fields.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    Node {
        id: id.into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// A sidecar's node in `namespace` with `labels`; `interception` is
/// Istio's INTERCEPTION_MODE (`NONE` or `REDIRECT`).
pub fn sidecar_node(
    id: &str,
    namespace: &str,
    interception: &str,
    labels: &[(&str, &str)],
) -> Node {
    node(
        id,
        &[
            ("NAMESPACE", namespace),
            ("INTERCEPTION_MODE", interception),
            ("ISTHMUS_ROLE", "sidecar"),
        ],
        labels,
    )
}

/// The `httpbin` sidecar in namespace `foo` (label app=httpbin, no traffic
/// capture).
pub fn httpbin_sidecar_node() -> Node {
    sidecar_node(
        "sidecar~127.0.0.1~httpbin-1.foo~foo.svc.cluster.local",
        "foo",
        "NONE",
        &[("app", "httpbin")],
    )
}
