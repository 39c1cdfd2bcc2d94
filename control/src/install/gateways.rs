//! The east-west, ingress and egress gateways: `isthmus-gateway` in its
//! router roles, each a Deployment spread over nodes and zones, a
//! PodDisruptionBudget and a Service.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapKeySelector, EnvVar, EnvVarSource, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, Service, ServicePort,
    ServiceSpec, Sysctl, TopologySpreadConstraint, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::control::CLUSTER_CONFIGMAP;
use super::k8s::{labels, meta, port};
use super::options::InstallOptions;
use super::proxy::{
    proxy_container, root_volume_from_cacerts, token_volume, ProxyRole, ProxySpec, ENV_CLUSTER_ID,
    ENV_LOCALITY, ENV_NETWORK, ENV_TRUST_DOMAIN, PROXY_UID,
};
use super::Doc;
use crate::app::CONTROL_NAMESPACE;

/// The east-west gateway's mTLS passthrough (TCP) and QUIC tunnel (UDP) port.
pub const EAST_WEST_PORT: u16 = 15443;

pub struct GatewayKind {
    pub role: ProxyRole,
    /// Deployment, Service and ServiceAccount name.
    pub name: &'static str,
    /// Istio's `istio=` label that Gateway resources select.
    pub istio_label: &'static str,
    pub service_type: &'static str,
    /// (name, port, protocol): the Service and container ports.
    pub ports: &'static [(&'static str, u16, &'static str)],
}

pub const GATEWAYS: [GatewayKind; 3] = [
    GatewayKind {
        role: ProxyRole::EastWest,
        name: "isthmus-eastwestgateway",
        istio_label: "eastwestgateway",
        service_type: "LoadBalancer",
        ports: &[
            ("tls-passthrough", EAST_WEST_PORT, "TCP"),
            ("quic-tunnel", EAST_WEST_PORT, "UDP"),
        ],
    },
    GatewayKind {
        role: ProxyRole::Ingress,
        name: "isthmus-ingressgateway",
        istio_label: "ingressgateway",
        service_type: "LoadBalancer",
        ports: &[("http2", 80, "TCP"), ("https", 443, "TCP")],
    },
    GatewayKind {
        role: ProxyRole::Egress,
        name: "isthmus-egressgateway",
        istio_label: "egressgateway",
        service_type: "ClusterIP",
        ports: &[("http2", 80, "TCP"), ("https", 443, "TCP")],
    },
];

impl GatewayKind {
    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(&[("app", self.name)])),
            match_expressions: None,
        }
    }

    fn pod_labels(&self) -> Vec<(String, String)> {
        vec![
            ("app".into(), self.name.into()),
            ("istio".into(), self.istio_label.into()),
            ("isthmus.io/proxy".into(), self.role.flag().into()),
        ]
    }
}

fn from_cluster_configmap(name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: CLUSTER_CONFIGMAP.into(),
                key: name.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn deployment(opts: &InstallOptions, gw: &GatewayKind) -> Deployment {
    let spec = ProxySpec {
        role: gw.role,
        image: &opts.image,
        labels: gw.pod_labels(),
        cluster_env: [ENV_CLUSTER_ID, ENV_NETWORK, ENV_LOCALITY, ENV_TRUST_DOMAIN]
            .into_iter()
            .map(from_cluster_configmap)
            .collect(),
        app_address: None,
    };
    let mut container = proxy_container("isthmus-proxy", &spec);
    if let Some(ports) = container.ports.as_mut() {
        ports.extend(
            gw.ports
                .iter()
                .map(|(name, number, protocol)| port(name, (*number).into(), protocol)),
        );
    }
    let pod_labels = gw.pod_labels().into_iter().collect();
    let same_app = LabelSelector {
        match_labels: Some(labels(&[("app", gw.name)])),
        match_expressions: None,
    };
    Deployment {
        metadata: meta(gw.name, Some(CONTROL_NAMESPACE), &[("app", gw.name)]),
        spec: DeploymentSpec {
            replicas: Some(opts.gateway_replicas),
            selector: gw.selector(),
            // Surge first: a gateway rollout never drops below the replica count.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(labels(&[("sidecar.istio.io/inject", "false")])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(gw.name.into()),
                    containers: vec![container],
                    volumes: Some(vec![token_volume(), root_volume_from_cacerts()]),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(PROXY_UID),
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        // Gateway resources name ports like 80 and 443; a
                        // namespaced, safe sysctl lets the non-root proxy bind
                        // them without any capability.
                        sysctls: Some(vec![Sysctl {
                            name: "net.ipv4.ip_unprivileged_port_start".into(),
                            value: "0".into(),
                        }]),
                        ..PodSecurityContext::default()
                    }),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![
                                WeightedPodAffinityTerm {
                                    weight: 100,
                                    pod_affinity_term: PodAffinityTerm {
                                        label_selector: Some(same_app.clone()),
                                        topology_key: "kubernetes.io/hostname".into(),
                                        ..PodAffinityTerm::default()
                                    },
                                },
                            ]),
                            ..PodAntiAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "topology.kubernetes.io/zone".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(same_app),
                        ..TopologySpreadConstraint::default()
                    }]),
                    // Matches the proxy's drain: open connections finish first.
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

fn service(gw: &GatewayKind) -> Service {
    let ports = gw
        .ports
        .iter()
        .map(|(name, number, protocol)| ServicePort {
            name: Some((*name).into()),
            port: (*number).into(),
            target_port: Some(IntOrString::Int((*number).into())),
            protocol: Some((*protocol).into()),
            ..ServicePort::default()
        })
        .collect();
    let external = gw.service_type == "LoadBalancer";
    Service {
        metadata: meta(
            gw.name,
            Some(CONTROL_NAMESPACE),
            &[("app", gw.name), ("istio", gw.istio_label)],
        ),
        spec: Some(ServiceSpec {
            type_: Some(gw.service_type.into()),
            // Keep the client address and avoid a second hop between nodes.
            external_traffic_policy: external.then(|| "Local".into()),
            selector: Some(labels(&[("app", gw.name)])),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn disruption_budget(gw: &GatewayKind) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(gw.name, Some(CONTROL_NAMESPACE), &[("app", gw.name)]),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(gw.selector()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

pub fn render(opts: &InstallOptions) -> Result<Vec<Doc>, super::InstallError> {
    let mut docs = Vec::new();
    for gw in &GATEWAYS {
        docs.push(Doc::new(&deployment(opts, gw))?);
        docs.push(Doc::new(&service(gw))?);
        docs.push(Doc::new(&disruption_budget(gw))?);
    }
    Ok(docs)
}
