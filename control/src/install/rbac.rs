//! Service accounts and least-privilege RBAC. The control plane gets exactly
//! the verbs its Kubernetes source needs: read what it watches, review
//! tokens for the CA, write back MCS status and imports, record Events.
//! (The MeshConfig still comes from `--config-dir`, so its CRD is not read.)
//! Gateways get no API access at all (their only credential use is the
//! projected token the CA reviews).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};

use super::gateways::GATEWAYS;
use super::k8s::meta;
use super::webhook::WEBHOOK_CONFIGURATION;
use super::{Doc, InstallError};
use crate::app::{CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT};

const READ: &[&str] = &["get", "list", "watch"];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    }
}

/// Every rule the control plane holds, in one list so the test can check it.
pub fn control_rules() -> Vec<PolicyRule> {
    vec![
        rule("", &["services", "pods", "nodes", "namespaces"], READ),
        // Gateway credentials (credentialName); read only. The source keeps
        // TLS Secrets of namespaces with a Gateway and drops the rest.
        rule("", &["secrets"], READ),
        rule("discovery.k8s.io", &["endpointslices"], READ),
        rule(
            "networking.istio.io",
            &[
                "virtualservices",
                "destinationrules",
                "gateways",
                "serviceentries",
                "workloadentries",
                "sidecars",
            ],
            READ,
        ),
        rule(
            "security.istio.io",
            &[
                "peerauthentications",
                "authorizationpolicies",
                "requestauthentications",
            ],
            READ,
        ),
        rule("multicluster.x-k8s.io", &["serviceexports"], READ),
        // Conditions (Valid, Conflict) by server-side apply.
        rule(
            "multicluster.x-k8s.io",
            &["serviceexports/status"],
            &["get", "patch"],
        ),
        // Imports mirrored from the registry; server-side apply creates
        // through `patch` but the API server also checks `create`.
        rule(
            "multicluster.x-k8s.io",
            &["serviceimports"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            "multicluster.x-k8s.io",
            &["serviceimports/status"],
            &["get", "patch"],
        ),
        rule("authentication.k8s.io", &["tokenreviews"], &["create"]),
        // The injector's caBundle (crate::inject::ca_bundle): only its own
        // configuration; list/watch carry a metadata.name field selector,
        // which resourceNames authorizes.
        PolicyRule {
            resource_names: Some(vec![WEBHOOK_CONFIGURATION.to_string()]),
            ..rule(
                "admissionregistration.k8s.io",
                &["mutatingwebhookconfigurations"],
                &["get", "list", "watch", "patch"],
            )
        },
        // kube's event Recorder writes events.k8s.io/v1 only.
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
}

pub fn render() -> Result<Vec<Doc>, InstallError> {
    let mut docs = Vec::new();
    let account = |name: &str| ServiceAccount {
        metadata: meta(name, Some(CONTROL_NAMESPACE), &[("app", name)]),
        ..ServiceAccount::default()
    };
    docs.push(Doc::new(&account(CONTROL_SERVICE_ACCOUNT))?);
    for gw in &GATEWAYS {
        docs.push(Doc::new(&account(gw.name))?);
    }
    let name = "isthmus-control";
    docs.push(Doc::new(&ClusterRole {
        metadata: meta(name, None, &[("app", name)]),
        rules: Some(control_rules()),
        ..ClusterRole::default()
    })?);
    docs.push(Doc::new(&ClusterRoleBinding {
        metadata: meta(name, None, &[("app", name)]),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: CONTROL_SERVICE_ACCOUNT.into(),
            namespace: Some(CONTROL_NAMESPACE.into()),
            api_group: None,
        }]),
    })?);
    Ok(docs)
}
