//! Cases for policy actions: no policy, the seed fixture, ALLOW without
//! rules, `rules: [{}]`, and DENY evaluated before ALLOW.

use std::path::Path;

use crate::case::Expect::{Allow, Deny};
use crate::case::{http, policy, tcp, Via};
use crate::pki::{API, WEB};
use crate::tables::Set;

pub fn sets() -> Vec<Set> {
    vec![
        (
            "no policy allows everything",
            String::new(),
            vec![
                http("get", Via::Mtls(WEB), "GET", "/", Allow),
                http("post plaintext", Via::Plain, "POST", "/x", Allow),
                tcp("tcp", API, Allow),
            ],
        ),
        (
            "seed: allow GET",
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rbac/allow-get.yaml"),
            )
            .expect("fixture"),
            vec![
                http("GET passes", Via::Mtls(WEB), "GET", "/productpage", Allow),
                http("POST denied", Via::Mtls(WEB), "POST", "/productpage", Deny),
                http("HEAD denied", Via::Mtls(API), "HEAD", "/", Deny),
                http("GET plaintext passes", Via::Plain, "GET", "/", Allow),
                // ALLOW rule with HTTP-only fields never matches TCP.
                tcp("tcp denied", WEB, Deny),
            ],
        ),
        (
            "ALLOW without rules denies all",
            policy("default", "nothing", "action: ALLOW"),
            vec![
                http("get", Via::Mtls(WEB), "GET", "/", Deny),
                http("plain", Via::Plain, "GET", "/", Deny),
                tcp("tcp", WEB, Deny),
            ],
        ),
        (
            "rules: [{}] allows all",
            policy("default", "all", "rules:\n- {}"),
            vec![
                http("get", Via::Mtls(WEB), "GET", "/", Allow),
                http("delete plaintext", Via::Plain, "DELETE", "/a/b", Allow),
                tcp("tcp", API, Allow),
            ],
        ),
        (
            "DENY before ALLOW",
            format!(
                "{}{}",
                policy("default", "allow-all", "rules:\n- {}"),
                policy(
                    "default",
                    "no-admin",
                    "action: DENY\nrules:\n- to:\n  - operation:\n      paths: [\"/admin*\"]\n- from:\n  - source:\n      principals: [\"cluster.local/ns/backend/sa/api\"]\n  to:\n  - operation:\n      methods: [\"DELETE\"]"
                )
            ),
            vec![
                http("admin denied", Via::Mtls(WEB), "GET", "/admin/users", Deny),
                http("admin exact denied", Via::Mtls(WEB), "GET", "/admin", Deny),
                http("admin with query denied", Via::Plain, "GET", "/admin?x=1", Deny),
                http("public allowed", Via::Mtls(WEB), "GET", "/public", Allow),
                http("api DELETE denied", Via::Mtls(API), "DELETE", "/items/1", Deny),
                http("web DELETE allowed", Via::Mtls(WEB), "DELETE", "/items/1", Allow),
                // DENY with HTTP-only fields on TCP denies more (fails closed).
                tcp("tcp denied by HTTP-only DENY", WEB, Deny),
            ],
        ),
    ]
}
