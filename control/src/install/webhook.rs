//! The sidecar injector's MutatingWebhookConfiguration.
//!
//! Choices, so that a control-plane outage never blocks pod creation:
//! `failurePolicy: Ignore` (pods then start without a sidecar; the control
//! plane's `/readyz` and the `isthmus_injection_*` metrics show it),
//! `timeoutSeconds: 5` (the API server's own budget for the whole admission
//! chain is 30 s), and namespace selectors that never match `kube-system`,
//! `kube-public`, `kube-node-lease` or the control plane's namespace, so
//! the control plane cannot depend on itself to start.
//!
//! Three webhooks, one per way to ask for injection (as Istio does):
//! the namespace label `isthmus-injection=enabled`; Istio's
//! `istio-injection=enabled` where no `isthmus-injection` label is set; and
//! the pod label `sidecar.istio.io/inject=true` in namespaces with neither
//! label. A pod label `sidecar.istio.io/inject=false` opts out everywhere;
//! the annotation of the same name is honoured by the injector itself.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::k8s::meta;
use super::proxy::CONTROL_SERVICE;
use crate::app::CONTROL_NAMESPACE;

pub const WEBHOOK_CONFIGURATION: &str = "isthmus-sidecar-injector";
pub const INJECT_PATH: &str = "/inject";
pub const NAMESPACE_LABEL: &str = "isthmus-injection";
pub const ISTIO_NAMESPACE_LABEL: &str = "istio-injection";
/// Istio's pod label (and legacy annotation) to opt in or out.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";

/// Namespaces the injector never sees.
pub fn never_injected() -> Vec<String> {
    [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        CONTROL_NAMESPACE,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
    }
}

fn selector(reqs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(reqs),
    }
}

fn webhook(
    name: &str,
    namespace: Vec<LabelSelectorRequirement>,
    object: LabelSelectorRequirement,
) -> MutatingWebhook {
    let mut ns = namespace;
    let system = never_injected();
    ns.push(LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".into(),
        operator: "NotIn".into(),
        values: Some(system),
    });
    MutatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        client_config: WebhookClientConfig {
            // Set and kept current by the control plane
            // (crate::inject::ca_bundle), never rendered: a static bundle
            // goes stale on the first root rotation.
            ca_bundle: None,
            service: Some(ServiceReference {
                name: CONTROL_SERVICE.into(),
                namespace: CONTROL_NAMESPACE.into(),
                path: Some(INJECT_PATH.into()),
                port: Some(443),
            }),
            url: None,
        },
        failure_policy: Some("Ignore".into()),
        match_policy: Some("Equivalent".into()),
        namespace_selector: Some(selector(ns)),
        object_selector: Some(selector(vec![object])),
        // Later webhooks may change the pod; a re-invocation sees the sidecar
        // already there and answers with no patch.
        reinvocation_policy: Some("IfNeeded".into()),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec!["".into()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        side_effects: "None".into(),
        timeout_seconds: Some(5),
        match_conditions: None,
    }
}

/// The same for every cluster: the `caBundle` is the control plane's to set.
pub fn configuration() -> MutatingWebhookConfiguration {
    let not_false = || req(INJECT_LABEL, "NotIn", &["false"]);
    MutatingWebhookConfiguration {
        metadata: meta(WEBHOOK_CONFIGURATION, None, &[("app", CONTROL_SERVICE)]),
        webhooks: Some(vec![
            webhook(
                "namespace.sidecar-injector.isthmus.io",
                vec![req(NAMESPACE_LABEL, "In", &["enabled"])],
                not_false(),
            ),
            webhook(
                "istio-namespace.sidecar-injector.isthmus.io",
                vec![
                    req(ISTIO_NAMESPACE_LABEL, "In", &["enabled"]),
                    req(NAMESPACE_LABEL, "DoesNotExist", &[]),
                ],
                not_false(),
            ),
            webhook(
                "object.sidecar-injector.isthmus.io",
                vec![
                    req(NAMESPACE_LABEL, "DoesNotExist", &[]),
                    req(ISTIO_NAMESPACE_LABEL, "DoesNotExist", &[]),
                ],
                req(INJECT_LABEL, "In", &["true"]),
            ),
        ]),
    }
}
