//! Cases for request and connection attributes: paths, methods and hosts,
//! ports, ipBlocks / remoteIpBlocks, and `when` conditions.

use crate::case::Expect::{Allow, Deny};
use crate::case::{http, policy, tcp, Case, Via};
use crate::pki::{API, BATCH_EAST, WEB};
use crate::tables::Set;

pub fn sets() -> Vec<Set> {
    vec![
        (
            "paths, methods and hosts with wildcards",
            policy(
                "default",
                "ops",
                "rules:\n- to:\n  - operation:\n      methods: [\"GET\", \"HEAD\"]\n      paths: [\"/api/*\", \"*.css\", \"/exact\"]\n  - operation:\n      hosts: [\"*.example.com\"]\n      notPaths: [\"/private*\"]",
            ),
            vec![
                http("prefix path", Via::Mtls(WEB), "GET", "/api/v1/items", Allow),
                http("prefix path HEAD", Via::Plain, "HEAD", "/api/x", Allow),
                http("suffix path", Via::Mtls(WEB), "GET", "/static/site.css", Allow),
                http("exact path", Via::Mtls(WEB), "GET", "/exact", Allow),
                http("exact path is exact", Via::Mtls(WEB), "GET", "/exact/more", Deny),
                http("query ignored by path match", Via::Mtls(WEB), "GET", "/exact?a=b", Allow),
                http("wrong method", Via::Mtls(WEB), "POST", "/api/v1/items", Deny),
                http("api prefix needs slash", Via::Mtls(WEB), "GET", "/apix", Deny),
                Case {
                    host: "shop.example.com",
                    ..http("host suffix", Via::Mtls(WEB), "POST", "/cart", Allow)
                },
                Case {
                    host: "SHOP.Example.COM:8443",
                    ..http("host case and port", Via::Mtls(WEB), "POST", "/cart", Allow)
                },
                Case {
                    host: "shop.example.com",
                    ..http("host but notPaths", Via::Mtls(WEB), "POST", "/private/x", Deny)
                },
                Case {
                    host: "example.com",
                    ..http("bare domain is not *.example.com", Via::Mtls(WEB), "POST", "/cart", Deny)
                },
            ],
        ),
        (
            "ports",
            format!(
                "{}{}",
                policy(
                    "default",
                    "ports",
                    "rules:\n- to:\n  - operation:\n      ports: [\"{HTTP_PORT}\", \"{TCP_PORT}\"]",
                ),
                policy(
                    "default",
                    "deny-plain-port",
                    "action: DENY\nrules:\n- to:\n  - operation:\n      notPorts: [\"{HTTP_PORT}\", \"{TCP_PORT}\"]\n      methods: [\"DELETE\"]",
                )
            ),
            vec![
                http("mTLS port allowed", Via::Mtls(API), "GET", "/", Allow),
                http("plaintext port not listed", Via::Plain, "GET", "/", Deny),
                tcp("tcp port allowed", API, Allow),
                http("mTLS port DELETE allowed", Via::Mtls(API), "DELETE", "/", Allow),
            ],
        ),
        (
            "ipBlocks and remoteIpBlocks",
            format!(
                "{}{}",
                policy(
                    "default",
                    "loopback",
                    "rules:\n- from:\n  - source:\n      ipBlocks: [\"127.0.0.0/8\"]\n      notIpBlocks: [\"127.0.0.2\"]\n  to:\n  - operation:\n      methods: [\"GET\"]\n- from:\n  - source:\n      remoteIpBlocks: [\"127.0.0.1/32\"]\n  to:\n  - operation:\n      methods: [\"PUT\"]\n- from:\n  - source:\n      ipBlocks: [\"10.0.0.0/8\"]\n  to:\n  - operation:\n      methods: [\"POST\"]",
                ),
                policy(
                    "default",
                    "deny-outside",
                    "action: DENY\nrules:\n- from:\n  - source:\n      notRemoteIpBlocks: [\"127.0.0.0/8\"]",
                )
            ),
            vec![
                http("loopback GET", Via::Plain, "GET", "/", Allow),
                http("remote ip PUT", Via::Mtls(API), "PUT", "/", Allow),
                http("10/8 POST denied", Via::Plain, "POST", "/", Deny),
                tcp("tcp from loopback with HTTP-only rules", WEB, Deny),
            ],
        ),
        (
            "when conditions",
            policy(
                "default",
                "when",
                "rules:\n- when:\n  - key: request.headers[x-team]\n    values: [\"blue\", \"green*\"]\n  - key: source.namespace\n    notValues: [\"backend\"]\n- from:\n  - source:\n      principals: [\"*\"]\n  when:\n  - key: source.principal\n    values: [\"cluster.local/ns/backend/sa/api\"]\n  - key: destination.port\n    values: [\"{HTTP_PORT}\", \"{TCP_PORT}\"]\n  - key: connection.sni\n    values: [\"outbound_.9080_._.*\"]\n- when:\n  - key: source.ip\n    values: [\"127.0.0.1\"]\n  - key: remote.ip\n    values: [\"127.0.0.0/8\"]\n  - key: request.headers[x-debug]\n    values: [\"*\"]\n",
            ),
            vec![
                Case {
                    headers: &[("x-team", "blue")],
                    ..http("header exact", Via::Mtls(WEB), "GET", "/", Allow)
                },
                Case {
                    headers: &[("x-team", "greenish")],
                    ..http("header prefix", Via::Plain, "GET", "/", Allow)
                },
                Case {
                    headers: &[("x-team", "red")],
                    ..http("header mismatch", Via::Mtls(WEB), "GET", "/", Deny)
                },
                Case {
                    headers: &[("x-team", "blue")],
                    ..http("header but excluded namespace falls to principal rule", Via::Mtls(API), "GET", "/", Allow)
                },
                http("source.principal + port + sni", Via::Mtls(API), "GET", "/", Allow),
                http("source.principal mismatch", Via::Mtls(BATCH_EAST), "GET", "/", Deny),
                Case {
                    headers: &[("x-debug", "1")],
                    ..http("source.ip + remote.ip + header presence", Via::Plain, "GET", "/", Allow)
                },
                http("no header", Via::Plain, "GET", "/", Deny),
                tcp("tcp api: principal, port, sni", API, Allow),
                tcp("tcp web: only HTTP-only rules", WEB, Deny),
            ],
        ),
    ]
}
