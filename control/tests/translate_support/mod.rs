//! Shared by the translation tests: loads a case directory (config YAML,
//! registry, proxy and local cluster settings) and runs the translator.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Locality as EnvoyLocality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::model::{ClusterInfo, ClusterService, Locality};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, Proxy, Resource, TypeUrl};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    pub local: LocalFixture,
    pub proxy: ProxyFixture,
    #[serde(default)]
    pub registry: RegistryFixture,
    /// `envoy` (default) or `grpc`.
    #[serde(default)]
    pub flavor: Option<String>,
    /// Listener names to ask for by name (proxyless gRPC); empty: wildcard.
    #[serde(default)]
    pub listener_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalFixture {
    pub cluster_id: String,
    pub network: String,
    #[serde(default)]
    pub locality: Locality,
    #[serde(default)]
    pub roots_pem: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyFixture {
    pub id: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub locality: Option<Locality>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryFixture {
    #[serde(default)]
    pub clusters: Vec<ClusterInfo>,
    #[serde(default)]
    pub services: Vec<ClusterService>,
}

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

pub fn case_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.join("case.yaml").exists())
        .collect();
    dirs.sort();
    dirs
}

fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::Object(m) => Kind::StructValue(Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
        other => panic!("unsupported metadata value {other}"),
    };
    Value { kind: Some(kind) }
}

pub fn proxy_of(f: &ProxyFixture) -> Proxy {
    let node = Node {
        id: f.id.clone(),
        metadata: Some(Struct {
            fields: f
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
        locality: f.locality.as_ref().map(|l| EnvoyLocality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.subzone.clone(),
        }),
        ..Default::default()
    };
    Proxy::from_node(Some(&node)).expect("fixture proxy node is valid")
}

pub fn config_of(path: &Path) -> ConfigSnapshot {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    ConfigSnapshot::from_text(path, &text)
        .unwrap_or_else(|errors| panic!("{}: fixture has errors: {errors:?}", path.display()))
}

pub fn registry_of(f: &RegistryFixture) -> RegistrySnapshot {
    let mut reg = RegistrySnapshot::default();
    for c in &f.clusters {
        reg.clusters.insert(c.id.clone(), c.clone());
    }
    for s in &f.services {
        reg.services
            .entry(s.cluster.clone())
            .or_default()
            .insert(s.service.key.clone(), s.clone());
    }
    reg
}

pub struct Loaded {
    pub case: Case,
    pub inputs: Inputs,
    pub proxy: Proxy,
    pub flavor: ProxyFlavor,
}

pub fn load(dir: &Path) -> Loaded {
    let case_text = std::fs::read_to_string(dir.join("case.yaml")).expect("case.yaml readable");
    let case: Case = serde_yaml_ng::from_str(&case_text)
        .unwrap_or_else(|e| panic!("{}/case.yaml: {e}", dir.display()));
    let config = config_of(&dir.join("config.yaml"));
    let local = LocalSettings {
        cluster_id: case.local.cluster_id.clone(),
        network: case.local.network.clone(),
        locality: case.local.locality.clone(),
        roots_pem: case.local.roots_pem.clone(),
        ..LocalSettings::default()
    };
    let inputs = Inputs::new(
        Arc::new(config),
        Arc::new(registry_of(&case.registry)),
        local,
    );
    let proxy = proxy_of(&case.proxy);
    let flavor = match case.flavor.as_deref() {
        Some("grpc") => ProxyFlavor::Grpc,
        _ => ProxyFlavor::Envoy,
    };
    Loaded {
        case,
        inputs,
        proxy,
        flavor,
    }
}

/// Every resource a client would end up holding, in push order: CDS and
/// LDS as asked (wildcard, or the case's listener names), EDS for the EDS
/// clusters, RDS for the routes the listeners name, SDS `ROOTCA`.
pub fn translate_all(l: &Loaded) -> BTreeMap<TypeUrl, Vec<Resource>> {
    let gen = |t: TypeUrl, names: &Names| generate(&l.inputs, &l.proxy, l.flavor, t, names);
    let mut out = BTreeMap::new();
    let clusters = gen(TypeUrl::Cluster, &Names::All);
    let cluster_names: BTreeSet<String> = clusters.iter().map(|r| r.name.clone()).collect();
    out.insert(
        TypeUrl::ClusterLoadAssignment,
        gen(TypeUrl::ClusterLoadAssignment, &Names::some(cluster_names)),
    );
    out.insert(TypeUrl::Cluster, clusters);
    let lds_names = if l.case.listener_names.is_empty() {
        Names::All
    } else {
        Names::some(&l.case.listener_names)
    };
    out.insert(TypeUrl::Listener, gen(TypeUrl::Listener, &lds_names));
    let rds_names = if l.case.listener_names.is_empty() {
        Names::All
    } else {
        lds_names.clone()
    };
    out.insert(
        TypeUrl::RouteConfiguration,
        gen(TypeUrl::RouteConfiguration, &rds_names),
    );
    out.insert(
        TypeUrl::Secret,
        gen(TypeUrl::Secret, &Names::some(["ROOTCA", "default"])),
    );
    out.insert(TypeUrl::NameTable, gen(TypeUrl::NameTable, &Names::All));
    out
}
