//! Cases for AUDIT, policy selection (root namespace, own namespace,
//! selectors) and TCP-only policies.

use crate::case::Expect::{Allow, Deny};
use crate::case::{http, policy, tcp, Via};
use crate::pki::{API, BATCH_EAST, WEB};
use crate::tables::Set;
use crate::workload::ROOT_NS;

pub fn sets() -> Vec<Set> {
    vec![
        (
            "AUDIT never denies",
            policy("default", "audit", "action: AUDIT\nrules:\n- to:\n  - operation:\n      methods: [\"POST\"]"),
            vec![
                http("audited POST passes", Via::Mtls(WEB), "POST", "/", Allow),
                http("GET passes", Via::Plain, "GET", "/", Allow),
                tcp("tcp passes", WEB, Allow),
            ],
        ),
        (
            "selection: root namespace, own namespace, selectors",
            format!(
                "{}{}{}{}",
                policy(ROOT_NS, "mesh-deny-put", "action: DENY\nrules:\n- to:\n  - operation:\n      methods: [\"PUT\"]"),
                policy("backend", "other-namespace", "action: DENY\nrules:\n- {}"),
                policy("default", "other-workload", "selector:\n  matchLabels:\n    app: other\naction: DENY\nrules:\n- {}"),
                policy("default", "this-workload", "selector:\n  matchLabels:\n    app: echo\naction: DENY\nrules:\n- to:\n  - operation:\n      paths: [\"/blocked\"]"),
            ),
            vec![
                http("mesh-wide DENY applies", Via::Mtls(WEB), "PUT", "/", Deny),
                http("other namespace's policy does not", Via::Mtls(WEB), "GET", "/", Allow),
                http("selector matching this workload", Via::Plain, "GET", "/blocked", Deny),
                http("other paths pass", Via::Plain, "GET", "/fine", Allow),
            ],
        ),
        (
            "TCP policies",
            format!(
                "{}{}",
                policy(
                    "default",
                    "tcp-allow",
                    "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/web\", \"cluster.local/ns/frontend/sa/batch\"]\n  to:\n  - operation:\n      ports: [\"{TCP_PORT}\"]\n- from:\n  - source:\n      namespaces: [\"backend\"]\n  to:\n  - operation:\n      ports: [\"{HTTP_PORT}\"]",
                ),
                policy(
                    "default",
                    "tcp-deny",
                    "action: DENY\nrules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/batch\"]",
                )
            ),
            vec![
                tcp("web allowed", WEB, Allow),
                tcp("batch denied by DENY", BATCH_EAST, Deny),
                tcp("api only on HTTP port", API, Deny),
                http("api on HTTP port", Via::Mtls(API), "GET", "/", Allow),
                http("web not on HTTP port", Via::Mtls(WEB), "GET", "/", Deny),
            ],
        ),
    ]
}
