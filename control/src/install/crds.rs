//! CustomResourceDefinitions: Isthmus's own MeshConfig (schema generated
//! from the Rust type the control plane parses, so the two cannot drift),
//! the MCS API's ServiceExport/ServiceImport (KEP-1645), and Istio's kinds
//! for clusters without Istio (spec kept as-is: the control plane validates
//! it with file:line:column findings, as `isthmus analyze` does).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::options::InstallOptions;
use super::{Doc, InstallError};
use crate::config::MeshConfigSpec;

struct Kind {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    categories: &'static [&'static str],
}

fn crd(
    k: &Kind,
    versions: &[&str],
    storage: &str,
    schema: &Value,
    status: bool,
) -> Result<CustomResourceDefinition, InstallError> {
    let props: JSONSchemaProps =
        serde_json::from_value(schema.clone()).map_err(|e| InstallError::Schema {
            kind: k.kind.to_string(),
            reason: e.to_string(),
        })?;
    let strings = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
    Ok(CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{}", k.plural, k.group)),
            labels: Some(super::k8s::labels(&[(
                "app.kubernetes.io/part-of",
                "isthmus",
            )])),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: k.group.into(),
            scope: "Namespaced".into(),
            names: CustomResourceDefinitionNames {
                kind: k.kind.into(),
                list_kind: Some(format!("{}List", k.kind)),
                plural: k.plural.into(),
                singular: Some(k.kind.to_lowercase()),
                short_names: strings(k.short),
                categories: strings(k.categories),
            },
            versions: versions
                .iter()
                .map(|v| CustomResourceDefinitionVersion {
                    name: v.to_string(),
                    served: true,
                    storage: *v == storage,
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: Some(props.clone()),
                    }),
                    subresources: status.then(|| CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(json!({}))),
                        scale: None,
                    }),
                    ..CustomResourceDefinitionVersion::default()
                })
                .collect(),
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    })
}

/// Drops what a structural schema may not carry: `additionalProperties:
/// false` next to `properties` (unknown fields are pruned anyway), nulls
/// in `enum` and schemars' titles.
fn structural(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        if map.get("additionalProperties") == Some(&Value::Bool(false)) {
            map.remove("additionalProperties");
        }
        map.remove("title");
        // `nullable: true` already admits null; a null inside `enum` is
        // something the API server's enum check need not be trusted with.
        if map.get("nullable") == Some(&Value::Bool(true)) {
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
        }
        for (_, child) in map.iter_mut() {
            *child = structural(child.take());
        }
    } else if let Value::Array(items) = &mut v {
        for child in items.iter_mut() {
            *child = structural(child.take());
        }
    }
    v
}

/// The MeshConfig spec's schema, generated from [`MeshConfigSpec`] the way
/// kube's `CustomResource` derive does it.
pub fn mesh_config_spec_schema() -> Result<Value, InstallError> {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .into_generator();
    let root = generator.into_root_schema_for::<MeshConfigSpec>();
    let value = serde_json::to_value(root).map_err(|e| InstallError::Schema {
        kind: "MeshConfig".into(),
        reason: e.to_string(),
    })?;
    Ok(structural(value))
}

fn object_with(spec: Value, status: Option<Value>) -> Value {
    let mut props = json!({"spec": spec});
    if let Some(s) = status {
        props["status"] = s;
    }
    json!({"type": "object", "properties": props})
}

fn preserve() -> Value {
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn conditions() -> Value {
    json!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "observedGeneration": {"type": "integer", "format": "int64"},
                "lastTransitionTime": {"type": "string", "format": "date-time"}
            }
        }
    })
}

fn service_export_schema() -> Value {
    object_with(
        json!({"type": "object"}),
        Some(json!({"type": "object", "properties": {"conditions": conditions()}})),
    )
}

fn service_import_schema() -> Value {
    let port = json!({
        "type": "object",
        "required": ["port"],
        "properties": {
            "name": {"type": "string"},
            "protocol": {"type": "string"},
            "appProtocol": {"type": "string"},
            "port": {"type": "integer", "format": "int32"}
        }
    });
    object_with(
        json!({
            "type": "object",
            "required": ["ports", "type"],
            "properties": {
                "ips": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
                "ports": {"type": "array", "x-kubernetes-list-type": "atomic", "items": port},
                "sessionAffinity": {"type": "string"},
                "sessionAffinityConfig": preserve(),
                "type": {"type": "string", "enum": ["ClusterSetIP", "Headless"]}
            }
        }),
        Some(json!({
            "type": "object",
            "properties": {
                "clusters": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["cluster"],
                    "items": {
                        "type": "object",
                        "required": ["cluster"],
                        "properties": {"cluster": {"type": "string"}}
                    }
                }
            }
        })),
    )
}

const ISTIO_NETWORKING: &[Kind] = &[
    Kind {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        short: &["vs"],
        categories: &["istio-io", "networking-istio-io"],
    },
    Kind {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        short: &["dr"],
        categories: &["istio-io", "networking-istio-io"],
    },
    Kind {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        short: &["gw"],
        categories: &["istio-io", "networking-istio-io"],
    },
    Kind {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        short: &["se"],
        categories: &["istio-io", "networking-istio-io"],
    },
    Kind {
        group: "networking.istio.io",
        kind: "WorkloadEntry",
        plural: "workloadentries",
        short: &["we"],
        categories: &["istio-io", "networking-istio-io"],
    },
    Kind {
        group: "networking.istio.io",
        kind: "Sidecar",
        plural: "sidecars",
        short: &[],
        categories: &["istio-io", "networking-istio-io"],
    },
];

const ISTIO_SECURITY: &[Kind] = &[
    Kind {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short: &["pa"],
        categories: &["istio-io", "security-istio-io"],
    },
    Kind {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short: &["ap"],
        categories: &["istio-io", "security-istio-io"],
    },
    Kind {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        short: &["ra"],
        categories: &["istio-io", "security-istio-io"],
    },
];

pub fn render(opts: &InstallOptions) -> Result<Vec<Doc>, InstallError> {
    let mut docs = Vec::new();
    let mesh = Kind {
        group: "isthmus.io",
        kind: "MeshConfig",
        plural: "meshconfigs",
        short: &[],
        categories: &["isthmus"],
    };
    let mesh_schema = object_with(mesh_config_spec_schema()?, None);
    docs.push(Doc::new(&crd(
        &mesh,
        &["v1alpha1"],
        "v1alpha1",
        &mesh_schema,
        false,
    )?)?);
    if opts.mcs_crds {
        let export = Kind {
            group: "multicluster.x-k8s.io",
            kind: "ServiceExport",
            plural: "serviceexports",
            short: &["svcex"],
            categories: &[],
        };
        let import = Kind {
            group: "multicluster.x-k8s.io",
            kind: "ServiceImport",
            plural: "serviceimports",
            short: &["svcim"],
            categories: &[],
        };
        docs.push(Doc::new(&crd(
            &export,
            &["v1alpha1"],
            "v1alpha1",
            &service_export_schema(),
            true,
        )?)?);
        docs.push(Doc::new(&crd(
            &import,
            &["v1alpha1"],
            "v1alpha1",
            &service_import_schema(),
            true,
        )?)?);
    }
    if opts.istio_crds {
        let schema = object_with(preserve(), Some(preserve()));
        for k in ISTIO_NETWORKING {
            docs.push(Doc::new(&crd(
                k,
                &["v1alpha3", "v1beta1", "v1"],
                "v1",
                &schema,
                true,
            )?)?);
        }
        for k in ISTIO_SECURITY {
            docs.push(Doc::new(&crd(k, &["v1beta1", "v1"], "v1", &schema, true)?)?);
        }
    }
    Ok(docs)
}
