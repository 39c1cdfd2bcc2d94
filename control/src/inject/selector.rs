//! Kubernetes label selector semantics (matchLabels AND matchExpressions
//! with In/NotIn/Exists/DoesNotExist), to check which of the injector's
//! webhooks the API server would call for a namespace and pod.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        let value = labels.get(&r.key);
        match r.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator the API server would reject matches nothing.
            _ => false,
        }
    });
    by_label && by_expr
}

/// Names of the webhooks whose namespace and object selectors match (an
/// absent selector matches everything).
pub fn matching_webhooks<'a>(
    webhooks: &'a [MutatingWebhook],
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    webhooks
        .iter()
        .filter(|w| {
            w.namespace_selector
                .as_ref()
                .is_none_or(|s| matches(s, namespace_labels))
                && w.object_selector
                    .as_ref()
                    .is_none_or(|s| matches(s, pod_labels))
        })
        .map(|w| w.name.as_str())
        .collect()
}
