//! prometheus-operator monitors (optional: its CRDs must exist). They are
//! not k8s-openapi kinds, so they are written as JSON with the operator's
//! field names (monitoring.coreos.com/v1).

use serde_json::json;

use super::proxy::CONTROL_SERVICE;
use super::Doc;
use crate::app::CONTROL_NAMESPACE;

pub fn render() -> Vec<Doc> {
    let control = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": CONTROL_SERVICE, "namespace": CONTROL_NAMESPACE, "labels": {"app": CONTROL_SERVICE}},
        "spec": {
            "selector": {"matchLabels": {"app": CONTROL_SERVICE}},
            "namespaceSelector": {"matchNames": [CONTROL_NAMESPACE]},
            "endpoints": [{"port": "http-monitoring", "path": "/metrics", "interval": "15s"}]
        }
    });
    // Gateways and sidecars carry `isthmus.io/proxy`; their admin port is
    // named `http-admin` in every pod.
    let proxies = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "isthmus-proxies", "namespace": CONTROL_NAMESPACE, "labels": {"app": CONTROL_SERVICE}},
        "spec": {
            "selector": {"matchExpressions": [{"key": "isthmus.io/proxy", "operator": "Exists"}]},
            "namespaceSelector": {"any": true},
            "podMetricsEndpoints": [{"port": "http-admin", "path": "/metrics", "interval": "15s"}]
        }
    });
    vec![Doc { value: control }, Doc { value: proxies }]
}
