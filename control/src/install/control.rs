//! The control plane: its Deployment, Services, data volume and the
//! per-cluster ConfigMaps (the MeshConfig it reads, the values the gateways
//! take as environment).
//!
//! One replica, by design: the cluster's federation node id is derived from
//! its cluster id, so two replicas would be two Raft members claiming one id.
//! Availability comes from static stability (proxies keep their last config)
//! and the federation quorum, so the Deployment uses `Recreate` (never two
//! at once on the same data volume) and has no PodDisruptionBudget: a
//! `minAvailable: 1` budget on a singleton blocks every node drain.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::join::{JOIN_SECRET, JOIN_TOKEN_DIR};
use super::k8s::{http_probe, labels, meta, port, resources, restricted};
use super::options::{InstallOptions, FEDERATION_PORT};
use super::proxy::{
    CONTROL_ADMIN_PORT, CONTROL_SERVICE, ENV_CLUSTER_ID, ENV_LOCALITY, ENV_NETWORK,
    ENV_TRUST_DOMAIN, GRPC_PORT, WEBHOOK_PORT, XDS_PORT,
};
use super::InstallError;
use crate::app::{CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT};

/// Istio's plug-in CA Secret (ca-cert.pem, ca-key.pem, root-cert.pem,
/// cert-chain.pem), created by the operator, never rendered: the key stays
/// out of manifests.
pub const CACERTS_SECRET: &str = "cacerts";
pub const MESH_CONFIGMAP: &str = "isthmus-mesh";
pub const CLUSTER_CONFIGMAP: &str = "isthmus-cluster";
const DATA_CLAIM: &str = "isthmus-control-data";
const APP: &str = "isthmus-control";
/// The image's non-root user (Dockerfile).
const CONTROL_UID: i64 = 65532;

const CONFIG_DIR: &str = "/etc/isthmus/config";
const CA_DIR: &str = "/etc/cacerts";
const DATA_DIR: &str = "/var/lib/isthmus";

fn app_labels() -> BTreeMap<String, String> {
    labels(&[("app", APP), ("istio", "pilot")])
}

/// `isthmus-mesh`: this cluster's MeshConfig, the file `--config-dir` holds.
pub fn mesh_configmap(opts: &InstallOptions) -> Result<ConfigMap, InstallError> {
    let doc = serde_json::json!({
        "apiVersion": "isthmus.io/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "mesh"},
        "spec": opts.mesh_config(),
    });
    let yaml = serde_yaml_ng::to_string(&doc).map_err(InstallError::Yaml)?;
    Ok(ConfigMap {
        metadata: meta(MESH_CONFIGMAP, Some(CONTROL_NAMESPACE), &[("app", APP)]),
        data: Some(BTreeMap::from([("mesh.yaml".to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// `isthmus-cluster`: the values every gateway passes as flags.
pub fn cluster_configmap(opts: &InstallOptions) -> ConfigMap {
    ConfigMap {
        metadata: meta(CLUSTER_CONFIGMAP, Some(CONTROL_NAMESPACE), &[("app", APP)]),
        data: Some(BTreeMap::from([
            (ENV_CLUSTER_ID.to_string(), opts.cluster_id.clone()),
            (ENV_NETWORK.to_string(), opts.network.clone()),
            (ENV_LOCALITY.to_string(), opts.locality.to_istio_string()),
            (ENV_TRUST_DOMAIN.to_string(), opts.trust_domain.clone()),
        ])),
        ..ConfigMap::default()
    }
}

/// The federation log and snapshots survive restarts and rescheduling.
pub fn data_claim() -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(DATA_CLAIM, Some(CONTROL_NAMESPACE), &[("app", APP)]),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity("2Gi".into()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// `isthmus control` arguments (control/src/app/mod.rs `ControlOptions`).
pub fn control_args(opts: &InstallOptions) -> Vec<String> {
    let image = opts.image.as_str();
    let mut args: Vec<String> = [
        "control",
        "--source",
        "kubernetes",
        "--config-dir",
        CONFIG_DIR,
        "--ca-dir",
        CA_DIR,
        "--data-dir",
        DATA_DIR,
        "--grpc-addr",
        &format!("0.0.0.0:{GRPC_PORT}"),
        "--plaintext-xds-addr",
        &format!("0.0.0.0:{XDS_PORT}"),
        "--admin-addr",
        &format!("0.0.0.0:{CONTROL_ADMIN_PORT}"),
        "--webhook-addr",
        &format!("0.0.0.0:{WEBHOOK_PORT}"),
        "--sidecar-image",
        image,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Joining: the token from the `isthmus-join` Secret (unused once this
    // node is a member; membership is on the data volume).
    if opts.join_token.is_some() {
        args.push("--join-token-file".into());
        args.push(super::join::join_token_file());
    }
    if let Some(addr) = &opts.federation_advertise {
        args.push("--federation-advertise".into());
        args.push(addr.clone());
    }
    args
}

pub fn deployment(opts: &InstallOptions) -> Deployment {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let container = Container {
        name: "isthmus".into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(control_args(opts)),
        ports: Some(vec![
            port("grpc-xds-tls", GRPC_PORT.into(), "TCP"),
            port("grpc-xds", XDS_PORT.into(), "TCP"),
            port("http-monitoring", CONTROL_ADMIN_PORT.into(), "TCP"),
            port("https-webhook", WEBHOOK_PORT.into(), "TCP"),
            port("quic-federation", FEDERATION_PORT.into(), "UDP"),
        ]),
        readiness_probe: Some(http_probe("/readyz", CONTROL_ADMIN_PORT.into(), 3, 3)),
        liveness_probe: Some(http_probe("/healthz", CONTROL_ADMIN_PORT.into(), 10, 3)),
        // Replaying a long federation log may take a while after a restart.
        startup_probe: Some(http_probe("/healthz", CONTROL_ADMIN_PORT.into(), 2, 90)),
        resources: Some(resources("500m", "512Mi", "4Gi")),
        security_context: Some(restricted(CONTROL_UID)),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("cacerts", CA_DIR, true),
            mount("data", DATA_DIR, false),
            mount("join", JOIN_TOKEN_DIR, true),
        ]),
        ..Container::default()
    };
    let volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: MESH_CONFIGMAP.into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "cacerts".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(CACERTS_SECRET.into()),
                default_mode: Some(0o400),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        // Only clusters installed with `--join` have it (the overlay's
        // Secret), so the base stays the same for every cluster.
        Volume {
            name: "join".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(JOIN_SECRET.into()),
                default_mode: Some(0o400),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: DATA_CLAIM.into(),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
    ];
    Deployment {
        metadata: meta(CONTROL_SERVICE, Some(CONTROL_NAMESPACE), &[("app", APP)]),
        spec: DeploymentSpec {
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(labels(&[("app", APP)])),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    labels: Some(app_labels()),
                    annotations: Some(labels(&[("sidecar.istio.io/inject", "false")])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(CONTROL_SERVICE_ACCOUNT.into()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(CONTROL_UID),
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    priority_class_name: Some("system-cluster-critical".into()),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn service_port(name: &str, port: u16, target: u16, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::Int(target.into())),
        protocol: Some(protocol.into()),
        ..ServicePort::default()
    }
}

/// In-cluster: xDS, the CA, admin (metrics) and the webhook on 443.
pub fn service() -> Service {
    Service {
        metadata: meta(CONTROL_SERVICE, Some(CONTROL_NAMESPACE), &[("app", APP)]),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(labels(&[("app", APP)])),
            ports: Some(vec![
                service_port("grpc-xds-tls", GRPC_PORT, GRPC_PORT, "TCP"),
                service_port("grpc-xds", XDS_PORT, XDS_PORT, "TCP"),
                service_port(
                    "http-monitoring",
                    CONTROL_ADMIN_PORT,
                    CONTROL_ADMIN_PORT,
                    "TCP",
                ),
                service_port("https-webhook", 443, WEBHOOK_PORT, "TCP"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The federation port as the other clusters reach it (QUIC, mutual TLS
/// with the trust domain's certificates, so it may face the internet).
pub fn federation_service() -> Service {
    Service {
        metadata: meta(
            "isthmus-federation",
            Some(CONTROL_NAMESPACE),
            &[("app", APP)],
        ),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            external_traffic_policy: Some("Local".into()),
            selector: Some(labels(&[("app", APP)])),
            ports: Some(vec![service_port(
                "quic-federation",
                FEDERATION_PORT,
                FEDERATION_PORT,
                "UDP",
            )]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
