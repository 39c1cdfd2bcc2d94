// Istio still emits the metadata principal and legacy header matchers.
#![allow(deprecated)]

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission as PbPermission, Policy as PbPolicy,
    Principal as PbPrincipal, Rbac as PbRbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    metadata_matcher::{path_segment::Segment, PathSegment},
    path_matcher,
    string_matcher::MatchPattern,
    value_matcher, MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use proptest::prelude::*;

use super::eval::{header, permission as eval_permission, url_path};
use super::*;
use crate::config::Ctx;

fn sm(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    }
}

fn perm(r: permission::Rule) -> PbPermission {
    PbPermission { rule: Some(r) }
}

fn prin(i: principal::Identifier) -> PbPrincipal {
    PbPrincipal {
        identifier: Some(i),
    }
}

fn path_perm(p: MatchPattern) -> PbPermission {
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(sm(p))),
    }))
}

fn method_perm(m: &str) -> PbPermission {
    perm(permission::Rule::Header(HeaderMatcher {
        name: ":method".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(sm(MatchPattern::Exact(
            m.into(),
        )))),
        ..Default::default()
    }))
}

fn spiffe(id: &str) -> PbPrincipal {
    prin(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(sm(MatchPattern::Exact(id.into()))),
        },
    ))
}

fn filter(action: Action, policies: Vec<(&str, PbPolicy)>) -> RbacFilter {
    let pb = HttpRbac {
        rules: Some(PbRbac {
            action: action as i32,
            policies: policies
                .into_iter()
                .map(|(n, p)| (n.to_string(), p))
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ctx = Ctx::new("Listener", "l");
    http_rbac_from_proto(&ctx, "f", HTTP_RBAC, &pack_any(pb)).expect("compiles")
}

fn policy(permissions: Vec<PbPermission>, principals: Vec<PbPrincipal>) -> PbPolicy {
    PbPolicy {
        permissions,
        principals,
        ..Default::default()
    }
}

struct Req {
    method: &'static str,
    path: &'static str,
    headers: http::HeaderMap,
    principal: Option<&'static str>,
    jwt: Option<(&'static str, serde_json::Value)>,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Req {
    fn new(method: &'static str, path: &'static str) -> Self {
        Req {
            method,
            path,
            headers: http::HeaderMap::new(),
            principal: None,
            jwt: None,
            peer: "10.1.2.3:40000".parse().expect("addr"),
            local: "10.0.0.1:9080".parse().expect("addr"),
        }
    }

    fn attrs(&self) -> Attributes<'_> {
        Attributes {
            peer: self.peer,
            remote_ip: self.peer.ip(),
            destination: Some(self.local),
            principal: self.principal,
            sni: None,
            request: Some(RequestAttributes {
                method: self.method,
                authority: "svc.example",
                path: self.path,
                scheme: "http",
                headers: &self.headers,
                jwt: self.jwt.as_ref().map(|(p, c)| (*p, c)),
            }),
        }
    }
}

fn allowed(filters: &[RbacFilter], r: &Req) -> bool {
    matches!(evaluate(filters, &r.attrs()), Verdict::Allowed { .. })
}

#[test]
fn allow_get_denies_post() {
    let f = filter(
        Action::Allow,
        vec![(
            "ns[default]-policy[read]-rule[0]",
            policy(
                vec![method_perm("GET")],
                vec![prin(principal::Identifier::Any(true))],
            ),
        )],
    );
    assert!(allowed(std::slice::from_ref(&f), &Req::new("GET", "/")));
    assert!(!allowed(std::slice::from_ref(&f), &Req::new("POST", "/")));
}

#[test]
fn deny_before_allow_and_empty_allow_denies_all() {
    let deny = filter(
        Action::Deny,
        vec![(
            "d",
            policy(
                vec![path_perm(MatchPattern::Prefix("/admin".into()))],
                vec![prin(principal::Identifier::Any(true))],
            ),
        )],
    );
    let allow_all = filter(
        Action::Allow,
        vec![(
            "a",
            policy(
                vec![perm(permission::Rule::Any(true))],
                vec![prin(principal::Identifier::Any(true))],
            ),
        )],
    );
    let chain = [deny.clone(), allow_all];
    assert!(allowed(&chain, &Req::new("GET", "/x")));
    match evaluate(&chain, &Req::new("GET", "/admin/x?q=1").attrs()) {
        Verdict::Denied { policy, .. } => assert_eq!(policy.as_deref(), Some("d")),
        v => panic!("expected denial, got {v:?}"),
    }
    let empty_allow = filter(Action::Allow, vec![]);
    assert!(!allowed(&[empty_allow], &Req::new("GET", "/x")));
    let no_rules = RbacFilter {
        name: HTTP_RBAC.into(),
        stat_prefix: String::new(),
        rules: None,
    };
    assert!(allowed(&[no_rules], &Req::new("GET", "/x")));
}

#[test]
fn log_never_denies_but_reports() {
    let log = filter(
        Action::Log,
        vec![(
            "audit",
            policy(
                vec![method_perm("POST")],
                vec![prin(principal::Identifier::Any(true))],
            ),
        )],
    );
    assert_eq!(
        evaluate([&log], &Req::new("POST", "/").attrs()),
        Verdict::Allowed {
            logged: vec!["audit".into()]
        }
    );
    assert_eq!(
        evaluate([&log], &Req::new("GET", "/").attrs()),
        Verdict::Allowed { logged: vec![] }
    );
}

#[test]
fn principals_ips_and_negations() {
    let f = filter(
        Action::Allow,
        vec![(
            "p",
            policy(
                vec![perm(permission::Rule::Any(true))],
                vec![prin(principal::Identifier::AndIds(principal::Set {
                    ids: vec![
                        spiffe("spiffe://td/ns/a/sa/x"),
                        prin(principal::Identifier::NotId(Box::new(prin(
                            principal::Identifier::DirectRemoteIp(CidrRange {
                                address_prefix: "10.9.0.0".into(),
                                prefix_len: Some(UInt32Value { value: 16 }),
                            }),
                        )))),
                    ],
                }))],
            ),
        )],
    );
    let fs = std::slice::from_ref(&f);
    let mut r = Req::new("GET", "/");
    assert!(!allowed(fs, &r), "no principal");
    r.principal = Some("spiffe://td/ns/a/sa/x");
    assert!(allowed(fs, &r));
    r.peer = "10.9.200.1:1".parse().expect("addr");
    assert!(!allowed(fs, &r), "excluded block");
    r.peer = "[::ffff:10.8.0.1]:1".parse().expect("addr");
    assert!(allowed(fs, &r), "v4-mapped address outside the block");
}

#[test]
fn jwt_metadata_both_namespaces() {
    let claim = |filter_ns: &str, path: &[&str], v: &str| {
        prin(principal::Identifier::Metadata(MetadataMatcher {
            filter: filter_ns.into(),
            path: path
                .iter()
                .map(|k| PathSegment {
                    segment: Some(Segment::Key((*k).into())),
                })
                .collect(),
            value: Some(ValueMatcher {
                match_pattern: Some(value_matcher::MatchPattern::OrMatch(
                    envoy_types::pb::envoy::r#type::matcher::v3::OrMatcher {
                        value_matchers: vec![
                            ValueMatcher {
                                match_pattern: Some(value_matcher::MatchPattern::StringMatch(sm(
                                    MatchPattern::Exact(v.into()),
                                ))),
                            },
                            ValueMatcher {
                                match_pattern: Some(value_matcher::MatchPattern::ListMatch(
                                    Box::new(envoy_types::pb::envoy::r#type::matcher::v3::ListMatcher {
                                        match_pattern: Some(envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern::OneOf(Box::new(ValueMatcher {
                                            match_pattern: Some(value_matcher::MatchPattern::StringMatch(sm(MatchPattern::Exact(v.into())))),
                                        }))),
                                    }),
                                )),
                            },
                        ],
                    },
                )),
            }),
            invert: false,
        }))
    };
    let f = filter(
        Action::Allow,
        vec![
            (
                "groups",
                policy(
                    vec![perm(permission::Rule::Any(true))],
                    vec![claim(JWT_AUTHN_METADATA, &["payload", "groups"], "admin")],
                ),
            ),
            (
                "principal",
                policy(
                    vec![perm(permission::Rule::Any(true))],
                    vec![claim(
                        ISTIO_AUTHN_METADATA,
                        &["request.auth.principal"],
                        "https://issuer/alice",
                    )],
                ),
            ),
        ],
    );
    let fs = std::slice::from_ref(&f);
    let mut r = Req::new("GET", "/");
    assert!(!allowed(fs, &r), "no token");
    r.jwt = Some((
        "https://issuer/bob",
        serde_json::json!({"groups": ["dev", "admin"]}),
    ));
    assert!(allowed(fs, &r), "claim list contains admin");
    r.jwt = Some(("https://issuer/bob", serde_json::json!({"groups": "dev"})));
    assert!(!allowed(fs, &r));
    r.jwt = Some(("https://issuer/alice", serde_json::json!({})));
    assert!(allowed(fs, &r), "request principal");
}

#[test]
fn absent_header_rules_follow_envoy() {
    let h = |spec: Option<HeaderMatchSpecifier>, invert: bool| {
        let ctx = Ctx::new("Listener", "l");
        let f = http_rbac_from_proto(
            &ctx,
            "f",
            HTTP_RBAC,
            &pack_any(HttpRbac {
                rules: Some(PbRbac {
                    action: Action::Allow as i32,
                    policies: [(
                        "p".to_string(),
                        policy(
                            vec![perm(permission::Rule::Header(HeaderMatcher {
                                name: "x-a".into(),
                                header_match_specifier: spec,
                                invert_match: invert,
                                ..Default::default()
                            }))],
                            vec![prin(principal::Identifier::Any(true))],
                        ),
                    )]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .expect("compiles");
        let Some(Rules { policies, .. }) = f.rules else {
            panic!("rules")
        };
        match &policies[0].1.permissions[0] {
            Permission::Header(h) => h.clone(),
            p => panic!("{p:?}"),
        }
    };
    let r = Req::new("GET", "/");
    let a = r.attrs();
    let exact = Some(HeaderMatchSpecifier::ExactMatch("v".into()));
    assert!(!header(&h(exact.clone(), false), &a));
    assert!(
        !header(&h(exact, true), &a),
        "inverted value match on a missing header"
    );
    assert!(!header(
        &h(Some(HeaderMatchSpecifier::PresentMatch(true)), false),
        &a
    ));
    assert!(header(
        &h(Some(HeaderMatchSpecifier::PresentMatch(true)), true),
        &a
    ));
    assert!(header(
        &h(Some(HeaderMatchSpecifier::PresentMatch(false)), false),
        &a
    ));
}

#[test]
fn bad_config_is_refused_with_field() {
    let ctx = Ctx::new("Listener", "l");
    let bad_regex = HttpRbac {
        rules: Some(PbRbac {
            action: Action::Allow as i32,
            policies: [(
                "p".to_string(),
                policy(
                    vec![path_perm(MatchPattern::SafeRegex(RegexMatcher {
                        regex: "(".into(),
                        engine_type: None,
                    }))],
                    vec![prin(principal::Identifier::Any(true))],
                ),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = http_rbac_from_proto(&ctx, "f", HTTP_RBAC, &pack_any(bad_regex)).expect_err("regex");
    assert!(
        e.field.contains("policies[\"p\"].permissions[0].url_path"),
        "{e}"
    );
    let no_principals = HttpRbac {
        rules: Some(PbRbac {
            action: Action::Allow as i32,
            policies: [(
                "p".to_string(),
                policy(vec![perm(permission::Rule::Any(true))], vec![]),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = http_rbac_from_proto(&ctx, "f", HTTP_RBAC, &pack_any(no_principals))
        .expect_err("no principals");
    assert!(e.reason.contains("principal"), "{e}");
    let bad_cidr = perm(permission::Rule::DestinationIp(CidrRange {
        address_prefix: "10.0.0.0".into(),
        prefix_len: Some(UInt32Value { value: 33 }),
    }));
    let pb = HttpRbac {
        rules: Some(PbRbac {
            action: Action::Deny as i32,
            policies: [(
                "p".to_string(),
                policy(vec![bad_cidr], vec![prin(principal::Identifier::Any(true))]),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = http_rbac_from_proto(&ctx, "f", HTTP_RBAC, &pack_any(pb)).expect_err("cidr");
    assert!(e.field.ends_with("prefix_len"), "{e}");
}

#[test]
fn cidr_prefixes() {
    let c = |s: &str, len| Cidr {
        addr: s.parse().expect("ip"),
        len,
    };
    assert!(c("10.0.0.0", 8).contains("10.200.1.1".parse().expect("ip")));
    assert!(!c("10.0.0.0", 8).contains("11.0.0.1".parse().expect("ip")));
    assert!(c("10.1.2.3", 32).contains("10.1.2.3".parse().expect("ip")));
    assert!(c("0.0.0.0", 0).contains("1.2.3.4".parse().expect("ip")));
    assert!(c("10.1.2.128", 25).contains("10.1.2.200".parse().expect("ip")));
    assert!(!c("10.1.2.128", 25).contains("10.1.2.127".parse().expect("ip")));
    assert!(c("fd00::", 8).contains("fd12::1".parse().expect("ip")));
    assert!(!c("fd00::", 8).contains("10.0.0.1".parse().expect("ip")));
}

fn string_pattern() -> impl Strategy<Value = MatchPattern> {
    let s = "[a-z/*.?%-]{0,12}";
    prop_oneof![
        s.prop_map(MatchPattern::Exact),
        s.prop_map(MatchPattern::Prefix),
        s.prop_map(MatchPattern::Suffix),
        s.prop_map(MatchPattern::Contains),
        "[a-z/.*+?()|\\[\\]^$\\\\]{0,10}".prop_map(|r| MatchPattern::SafeRegex(RegexMatcher {
            regex: r,
            engine_type: None
        })),
    ]
}

proptest! {
    // Any pattern either compiles or is refused; matching any (possibly
    // non-ASCII, multi-byte) path or header value never panics.
    #[test]
    fn path_and_header_matching_never_panics(
        pattern in string_pattern(),
        ignore_case in any::<bool>(),
        path in "\\PC{0,40}",
        value in "\\PC{0,40}",
        invert in any::<bool>(),
    ) {
        let m = StringMatcher { match_pattern: Some(pattern), ignore_case };
        let pb = HttpRbac {
            rules: Some(PbRbac {
                action: Action::Allow as i32,
                policies: [(
                    "p".to_string(),
                    policy(
                        vec![
                            perm(permission::Rule::UrlPath(PathMatcher {
                                rule: Some(path_matcher::Rule::Path(m.clone())),
                            })),
                            perm(permission::Rule::Header(HeaderMatcher {
                                name: "x-h".into(),
                                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(m)),
                                invert_match: invert,
                                ..Default::default()
                            })),
                        ],
                        vec![prin(principal::Identifier::Any(true))],
                    ),
                )]
                .into_iter()
                .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ctx = Ctx::new("Listener", "l");
        if let Ok(f) = http_rbac_from_proto(&ctx, "f", HTTP_RBAC, &pack_any(pb)) {
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.append("x-h", v.clone());
                headers.append("x-h", v);
            }
            let a = Attributes {
                peer: "127.0.0.1:1".parse().expect("addr"),
                remote_ip: "127.0.0.1".parse().expect("ip"),
                destination: None,
                principal: None,
                sni: None,
                request: Some(RequestAttributes {
                    method: "GET",
                    authority: "a",
                    path: &path,
                    scheme: "http",
                    headers: &headers,
                    jwt: None,
                }),
            };
            let _ = evaluate([&f], &a);
            let Some(rules) = &f.rules else { return Ok(()) };
            for p in &rules.policies[0].1.permissions {
                let _ = eval_permission(p, &a);
            }
        }
    }

    #[test]
    fn url_path_drops_query_and_fragment(p in "[a-z/]{0,10}", q in "[a-z=&]{0,10}") {
        let with_query = format!("{p}?{q}");
        prop_assert_eq!(url_path(&with_query), p.as_str());
        let with_fragment = format!("{p}#{q}");
        prop_assert_eq!(url_path(&with_fragment), p.as_str());
    }
}
