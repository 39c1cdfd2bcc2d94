//! The JSON Patch that injects the proxy: explicit `add` operations (an
//! array or map is created whole when absent, appended to otherwise), so
//! the patch applies to exactly the pod the API server sent.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, ObjectFieldSelector,
    Pod, SecurityContext, Volume,
};
use serde::Serialize;
use serde_json::{json, Value};

use super::capture::{CaptureRules, Interception, ANN_INTERCEPTION_MODE};
use super::{
    InjectConfig, InjectError, INIT_CONTAINER, PROXY_CONTAINER, ROOT_ANNOTATION, STATUS_ANNOTATION,
};
use crate::install::k8s::{env, resources};
use crate::install::proxy::{
    proxy_container, token_volume, ProxyRole, ProxySpec, ENV_CLUSTER_ID, ENV_LOCALITY, ENV_NETWORK,
    ENV_TRUST_DOMAIN, ROOT_FILE, ROOT_VOLUME,
};

/// Labels the injector sets: Istio's "this pod speaks mTLS" and the proxy
/// marker the PodMonitor selects.
const ADDED_LABELS: [(&str, &str); 2] = [
    ("security.istio.io/tlsMode", "istio"),
    ("isthmus.io/proxy", "sidecar"),
];

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, InjectError> {
    Ok(serde_json::to_value(v)?)
}

/// Adds `entries` to the map at `/metadata/<field>`.
fn add_to_map(
    ops: &mut Vec<PatchOperation>,
    existing: Option<&BTreeMap<String, String>>,
    field: &str,
    entries: Vec<(String, String)>,
) {
    match existing {
        None => {
            let map: serde_json::Map<String, Value> = entries
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            ops.push(add(&["metadata", field], Value::Object(map)));
        }
        Some(_) => {
            for (k, v) in entries {
                ops.push(add(&["metadata", field, &k], Value::String(v)));
            }
        }
    }
}

/// Appends `items` to the array at `/spec/<field>`.
fn add_to_list(ops: &mut Vec<PatchOperation>, exists: bool, field: &str, items: Vec<Value>) {
    if exists {
        for item in items {
            ops.push(add(&["spec", field, "-"], item));
        }
    } else {
        ops.push(add(&["spec", field], Value::Array(items)));
    }
}

fn root_volume() -> Volume {
    Volume {
        name: ROOT_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: ROOT_FILE.into(),
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{ROOT_ANNOTATION}']"),
                }),
                ..DownwardAPIVolumeFile::default()
            }]),
            ..DownwardAPIVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The capture init container: loads the rules and exits. Needs NET_ADMIN
/// and NET_RAW in the pod's network namespace only.
fn init_container(config: &InjectConfig, rules: &CaptureRules) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "printf '%s' \"$ISTHMUS_CAPTURE_RULES\" | iptables-restore --noflush".into(),
        ]),
        env: Some(vec![env(
            "ISTHMUS_CAPTURE_RULES",
            &rules.iptables_restore(),
        )]),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// What the injector adds to `pod`, and warnings for the API client.
pub fn build(config: &InjectConfig, pod: &Pod) -> Result<(Patch, Vec<String>), InjectError> {
    let meta = &pod.metadata;
    let annotations = meta.annotations.clone().unwrap_or_default();
    let interception = match annotations.get(ANN_INTERCEPTION_MODE) {
        Some(v) => Interception::parse(v)?,
        None => config.default_interception,
    };
    let warnings = Vec::new();
    let init = match interception {
        Interception::None => None,
        Interception::Redirect => Some(init_container(
            config,
            &CaptureRules::from_annotations(&annotations)?,
        )),
    };

    let spec = ProxySpec {
        role: ProxyRole::Sidecar,
        image: &config.image,
        labels: meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cluster_env: vec![
            env(ENV_CLUSTER_ID, &config.cluster_id),
            env(ENV_NETWORK, &config.network),
            env(ENV_LOCALITY, &config.locality),
            env(ENV_TRUST_DOMAIN, &config.trust_domain),
        ],
        app_address: None,
    };
    let mut proxy = proxy_container(PROXY_CONTAINER, &spec);
    // The proxy tells the control plane (INTERCEPTION_MODE) so it gets the
    // 15001/15006 listeners the init container's rules send traffic to.
    if interception == Interception::Redirect {
        proxy
            .args
            .get_or_insert_with(Vec::new)
            .push("--interception=redirect".to_string());
    }
    let volumes = [token_volume(), root_volume()];

    let status = json!({
        "containers": [PROXY_CONTAINER],
        "initContainers": init.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "volumes": volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
        "interceptionMode": match interception { Interception::None => "NONE", Interception::Redirect => "REDIRECT" },
    });

    let mut ops = Vec::new();
    add_to_map(
        &mut ops,
        meta.annotations.as_ref(),
        "annotations",
        vec![
            (STATUS_ANNOTATION.to_string(), status.to_string()),
            (ROOT_ANNOTATION.to_string(), config.root_cert_pem.clone()),
        ],
    );
    add_to_map(
        &mut ops,
        meta.labels.as_ref(),
        "labels",
        ADDED_LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let pod_spec = pod.spec.as_ref();
    if let Some(init) = init {
        add_to_list(
            &mut ops,
            pod_spec.is_some_and(|s| s.init_containers.is_some()),
            "initContainers",
            vec![to_value(&init)?],
        );
    }
    // Appended: the application's container stays the default for `kubectl exec/logs`.
    ops.push(add(&["spec", "containers", "-"], to_value(&proxy)?));
    add_to_list(
        &mut ops,
        pod_spec.is_some_and(|s| s.volumes.is_some()),
        "volumes",
        volumes.iter().map(to_value).collect::<Result<_, _>>()?,
    );
    Ok((Patch(ops), warnings))
}
