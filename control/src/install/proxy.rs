//! The proxy container (`isthmus-gateway`), shared by the gateways
//! `isthmus install` renders and the sidecars the injector adds: one place
//! that knows the proxy's real flags (gateway/src/cli), its ports and mounts.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, KeyToPath, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};

use super::k8s::{env_field, http_probe, port, resources, restricted};
use crate::app::CONTROL_NAMESPACE;

/// The control plane's Service (its webhook certificate names it too).
pub const CONTROL_SERVICE: &str = "isthmus-control";
/// Plaintext xDS (Istio's 15010), for proxyless gRPC clients and debugging;
/// the proxies Isthmus renders and injects do not use it.
pub const XDS_PORT: u16 = 15010;
/// xDS and the CA over TLS: proxies fetch xDS here with mutual TLS (their
/// workload certificate; the control plane's SPIFFE identity is checked).
pub const GRPC_PORT: u16 = 15012;
/// The control plane's admin HTTP (/healthz, /readyz, /metrics).
pub const CONTROL_ADMIN_PORT: u16 = 15014;
/// The injection webhook (HTTPS), as istiod's 15017.
pub const WEBHOOK_PORT: u16 = 15017;
/// The proxy's admin HTTP (/healthz, /readyz, /metrics, /config_dump).
pub const PROXY_ADMIN_PORT: u16 = 15000;
/// The proxy's user and group: traffic capture exempts this UID.
pub const PROXY_UID: i64 = 1337;

/// Istio's projected token for the CA (audience `istio-ca`).
pub const TOKEN_VOLUME: &str = "istio-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// The trust domain's root, to verify the CA's serving certificate.
pub const ROOT_VOLUME: &str = "isthmus-root-cert";
pub const ROOT_DIR: &str = "/var/run/isthmus/root";
pub const ROOT_FILE: &str = "root-cert.pem";

/// Environment variables the arguments refer to as `$(NAME)`; the pod sets
/// them (from the downward API, the cluster ConfigMap, or literals).
pub const ENV_CLUSTER_ID: &str = "ISTHMUS_CLUSTER_ID";
pub const ENV_NETWORK: &str = "ISTHMUS_NETWORK";
pub const ENV_LOCALITY: &str = "ISTHMUS_LOCALITY";
pub const ENV_TRUST_DOMAIN: &str = "ISTHMUS_TRUST_DOMAIN";

/// `isthmus-gateway --role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRole {
    Sidecar,
    EastWest,
    Ingress,
    Egress,
}

impl ProxyRole {
    pub fn flag(self) -> &'static str {
        match self {
            ProxyRole::Sidecar => "sidecar",
            ProxyRole::EastWest => "east-west",
            ProxyRole::Ingress => "ingress",
            ProxyRole::Egress => "egress",
        }
    }
}

/// `host` of the control plane's Service in the cluster DNS.
pub fn control_host() -> String {
    format!("{CONTROL_SERVICE}.{CONTROL_NAMESPACE}.svc")
}

/// What differs between a gateway and a sidecar container.
pub struct ProxySpec<'a> {
    pub role: ProxyRole,
    pub image: &'a str,
    /// Workload labels passed as `--label` (the node metadata LABELS).
    pub labels: Vec<(String, String)>,
    /// `ISTHMUS_*` cluster values: from the cluster ConfigMap (gateways) or literals (sidecars).
    pub cluster_env: Vec<EnvVar>,
    /// Sidecar without capture: where the application listens (`--app-address`).
    pub app_address: Option<&'a str>,
}

/// Kubernetes expands `$(VAR)` in arguments; a literal `$` is written `$$`.
fn escape(value: &str) -> String {
    value.replace('$', "$$")
}

/// The image's proxy-only binary: the same flags as `isthmus gateway`
/// without the control plane's code, which a sidecar would otherwise map.
pub const PROXY_COMMAND: &str = "/usr/local/bin/isthmus-gateway";

/// The arguments of `isthmus-gateway` (the container's command).
pub fn proxy_args(spec: &ProxySpec<'_>) -> Vec<String> {
    let host = control_host();
    let mut args: Vec<String> = [
        "--role",
        spec.role.flag(),
        "--xds",
        &format!("https://{host}:{GRPC_PORT}"),
        "--ca",
        &format!("{host}:{GRPC_PORT}"),
        "--root-cert",
        &format!("{ROOT_DIR}/{ROOT_FILE}"),
        "--token-file",
        &format!("{TOKEN_DIR}/{TOKEN_VOLUME}"),
        "--trust-domain",
        &format!("$({ENV_TRUST_DOMAIN})"),
        "--cluster-id",
        &format!("$({ENV_CLUSTER_ID})"),
        "--network",
        &format!("$({ENV_NETWORK})"),
        "--locality",
        &format!("$({ENV_LOCALITY})"),
        "--ip",
        "$(POD_IP)",
        "--pod",
        "$(POD_NAME)",
        "--namespace",
        "$(POD_NAMESPACE)",
        "--service-account",
        "$(SERVICE_ACCOUNT)",
        "--admin",
        &format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(addr) = spec.app_address {
        args.push("--app-address".into());
        args.push(addr.to_string());
    }
    for (k, v) in &spec.labels {
        args.push("--label".into());
        args.push(escape(&format!("{k}={v}")));
    }
    args
}

/// The proxy container: probes on its admin port, non-root as UID 1337.
pub fn proxy_container(name: &str, spec: &ProxySpec<'_>) -> Container {
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("POD_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    env.extend(spec.cluster_env.iter().cloned());
    let (cpu, mem, limit) = match spec.role {
        ProxyRole::Sidecar => ("100m", "128Mi", "1Gi"),
        _ => ("500m", "256Mi", "2Gi"),
    };
    Container {
        name: name.to_string(),
        image: Some(spec.image.to_string()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![PROXY_COMMAND.to_string()]),
        args: Some(proxy_args(spec)),
        env: Some(env),
        ports: Some(vec![port("http-admin", PROXY_ADMIN_PORT.into(), "TCP")]),
        readiness_probe: Some(http_probe("/readyz", PROXY_ADMIN_PORT.into(), 2, 30)),
        liveness_probe: Some(http_probe("/healthz", PROXY_ADMIN_PORT.into(), 10, 3)),
        resources: Some(resources(cpu, mem, limit)),
        security_context: Some(restricted(PROXY_UID)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: ROOT_VOLUME.into(),
                mount_path: ROOT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

/// The projected service-account token the CA authenticates CSRs with.
pub fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(43200),
                    path: TOKEN_VOLUME.into(),
                    user: None,
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Gateways (in the control plane's namespace) read the root from the
/// plug-in CA Secret, only that one key.
pub fn root_volume_from_cacerts() -> Volume {
    Volume {
        name: ROOT_VOLUME.into(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some(super::control::CACERTS_SECRET.into()),
            items: Some(vec![KeyToPath {
                key: ROOT_FILE.into(),
                path: ROOT_FILE.into(),
                mode: None,
                user: None,
            }]),
            ..Default::default()
        }),
        ..Volume::default()
    }
}
