//! Cases for `from.source`: principals (local, cross-cluster, other trust
//! domain, wildcards, notPrincipals) and namespaces.

use crate::case::Expect::{Allow, Deny};
use crate::case::{http, policy, tcp, Via};
use crate::pki::{API, BATCH_EAST, WEB, WEB_OTHER_TD};
use crate::tables::Set;

pub fn sets() -> Vec<Set> {
    vec![
        (
            "principals",
            policy(
                "default",
                "web-only",
                "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/web\"]",
            ),
            vec![
                http("web allowed", Via::Mtls(WEB), "GET", "/", Allow),
                http("api denied", Via::Mtls(API), "GET", "/", Deny),
                http("east batch denied", Via::Mtls(BATCH_EAST), "GET", "/", Deny),
                http("other trust domain denied", Via::Mtls(WEB_OTHER_TD), "GET", "/", Deny),
                http("plaintext denied", Via::Plain, "GET", "/", Deny),
                tcp("tcp web allowed", WEB, Allow),
                tcp("tcp api closed", API, Deny),
            ],
        ),
        (
            "cross-cluster and cross-trust-domain principals",
            policy(
                "default",
                "remote",
                "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/sa/batch\", \"other.td/ns/frontend/sa/web\"]",
            ),
            vec![
                http("east cluster allowed", Via::Mtls(BATCH_EAST), "GET", "/", Allow),
                http("other trust domain allowed", Via::Mtls(WEB_OTHER_TD), "GET", "/", Allow),
                http("local web denied", Via::Mtls(WEB), "GET", "/", Deny),
                tcp("tcp east allowed", BATCH_EAST, Allow),
                tcp("tcp local web closed", WEB, Deny),
            ],
        ),
        (
            "principal wildcards and notPrincipals",
            policy(
                "default",
                "wild",
                "rules:\n- from:\n  - source:\n      principals: [\"cluster.local/ns/frontend/*\"]\n      notPrincipals: [\"*/sa/batch\"]\n- from:\n  - source:\n      principals: [\"*\"]\n  to:\n  - operation:\n      paths: [\"/open\"]",
            ),
            vec![
                http("prefix match", Via::Mtls(WEB), "GET", "/", Allow),
                http("excluded by suffix", Via::Mtls(BATCH_EAST), "GET", "/", Deny),
                http("other namespace", Via::Mtls(API), "GET", "/", Deny),
                http("any authenticated on /open", Via::Mtls(API), "GET", "/open", Allow),
                http("plaintext not authenticated on /open", Via::Plain, "GET", "/open", Deny),
            ],
        ),
        (
            "namespaces",
            format!(
                "{}{}",
                policy(
                    "default",
                    "frontend",
                    "rules:\n- from:\n  - source:\n      namespaces: [\"frontend\"]",
                ),
                policy(
                    "default",
                    "not-frontend-deny-post",
                    "action: DENY\nrules:\n- from:\n  - source:\n      notNamespaces: [\"frontend\"]\n  to:\n  - operation:\n      methods: [\"POST\"]",
                )
            ),
            vec![
                http("frontend web", Via::Mtls(WEB), "GET", "/", Allow),
                http("frontend in east cluster", Via::Mtls(BATCH_EAST), "POST", "/", Allow),
                http("frontend in other trust domain", Via::Mtls(WEB_OTHER_TD), "GET", "/", Allow),
                http("backend denied", Via::Mtls(API), "GET", "/", Deny),
                http("plaintext denied", Via::Plain, "GET", "/", Deny),
                tcp("tcp frontend allowed", WEB, Allow),
            ],
        ),
    ]
}
