use super::*;
use crate::config::{route_config_from_proto, RouteTable};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, route, route_action, route_match::PathSpecifier, weighted_cluster,
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route as PbRoute,
    RouteAction, RouteConfiguration, RouteMatch as PbMatch, VirtualHost as PbVhost,
    WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

fn to(cluster: &str) -> Option<route::Action> {
    Some(route::Action::Route(RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    }))
}

fn r(name: &str, path: PathSpecifier, action: Option<route::Action>) -> PbRoute {
    PbRoute {
        name: name.into(),
        r#match: Some(PbMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action,
        ..Default::default()
    }
}

fn sm(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

fn table() -> RouteTable {
    let prefix = |p: &str| PathSpecifier::Prefix(p.into());
    let mut hdr = r("hdr", prefix("/"), to("v2"));
    if let Some(m) = hdr.r#match.as_mut() {
        m.headers = vec![HeaderMatcher {
            name: "end-user".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(sm(
                MatchPattern::Exact("jason".into()),
            ))),
            ..Default::default()
        }];
    }
    let mut inv = r("inv", prefix("/inv"), to("not-canary"));
    if let Some(m) = inv.r#match.as_mut() {
        m.headers = vec![HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            invert_match: true,
            ..Default::default()
        }];
    }
    let mut q = r("query", prefix("/q"), to("query"));
    if let Some(m) = q.r#match.as_mut() {
        m.query_parameters = vec![QueryParameterMatcher {
            name: "debug".into(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(sm(
                MatchPattern::Prefix("tr".into()),
            ))),
        }];
    }
    let mut ci = r("ci", PathSpecifier::Path("/Exact".into()), to("ci"));
    if let Some(m) = ci.r#match.as_mut() {
        m.case_sensitive = Some(BoolValue { value: false });
    }
    let rewrite = r(
        "rewrite",
        prefix("/old/"),
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("rw".into())),
            prefix_rewrite: "/new/".into(),
            ..Default::default()
        })),
    );
    let rx = r(
        "regex",
        PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/users/[0-9]+".into(),
            ..Default::default()
        }),
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("users".into())),
            regex_rewrite: Some(RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: "^/users/([0-9]+)$".into(),
                    ..Default::default()
                }),
                substitution: "/u/\\1".into(),
            }),
            ..Default::default()
        })),
    );
    let sep = r(
        "sep",
        PathSpecifier::PathSeparatedPrefix("/api".into()),
        to("api"),
    );
    let redirect = r(
        "redir",
        prefix("/login"),
        Some(route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            response_code: redirect_action::RedirectResponseCode::PermanentRedirect as i32,
            ..Default::default()
        })),
    );
    let redirect2 = r(
        "redir2",
        prefix("/moved/"),
        Some(route::Action::Redirect(RedirectAction {
            host_redirect: "new.example".into(),
            path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
                "/here/".into(),
            )),
            ..Default::default()
        })),
    );
    let direct = r(
        "direct",
        prefix("/health"),
        Some(route::Action::DirectResponse(DirectResponseAction {
            status: 204,
            ..Default::default()
        })),
    );
    let weighted = r(
        "canary",
        prefix("/"),
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters: vec![
                        weighted_cluster::ClusterWeight {
                            name: "v1".into(),
                            weight: Some(UInt32Value { value: 90 }),
                            ..Default::default()
                        },
                        weighted_cluster::ClusterWeight {
                            name: "v2".into(),
                            weight: Some(UInt32Value { value: 10 }),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            )),
            ..Default::default()
        })),
    );
    let rc = RouteConfiguration {
        name: "80".into(),
        virtual_hosts: vec![
            PbVhost {
                name: "reviews".into(),
                domains: vec![
                    "reviews".into(),
                    "reviews:9080".into(),
                    "reviews.default.svc.cluster.local".into(),
                ],
                routes: vec![
                    hdr, inv, q, ci, rewrite, rx, sep, redirect, redirect2, direct, weighted,
                ],
                ..Default::default()
            },
            PbVhost {
                name: "suffix".into(),
                domains: vec!["*.example.com".into()],
                routes: vec![r("s", prefix("/"), to("suffix"))],
                ..Default::default()
            },
            PbVhost {
                name: "longer-suffix".into(),
                domains: vec!["*.api.example.com".into()],
                routes: vec![r("s", prefix("/"), to("api-suffix"))],
                ..Default::default()
            },
            PbVhost {
                name: "prefix".into(),
                domains: vec!["internal.*".into()],
                routes: vec![r("p", prefix("/"), to("prefix"))],
                ..Default::default()
            },
            PbVhost {
                name: "any".into(),
                domains: vec!["*".into()],
                routes: vec![r("a", prefix("/"), to("any"))],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    route_config_from_proto(&rc).expect("valid route configuration")
}

fn go<'t>(
    t: &'t RouteTable,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    draw: f64,
) -> Decision<'t> {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    // The HeaderMap must outlive the call only; decisions borrow the table.
    let meta = RequestMeta {
        method: &Method::GET,
        authority,
        path_and_query: path,
        scheme: "http",
        headers: &h,
    };
    decide(t, &meta, draw)
}

fn cluster_of(d: &Decision<'_>) -> String {
    match d {
        Decision::Forward { cluster, path, .. } => match path {
            Some(p) => format!("{cluster} {p}"),
            None => cluster.to_string(),
        },
        Decision::Redirect {
            status, location, ..
        } => format!("redirect {status} {location}"),
        Decision::Direct { status, .. } => format!("direct {status}"),
        Decision::NoRoute => "none".into(),
        Decision::TlsRedirect { location } => format!("tls-redirect {location}"),
    }
}

#[test]
fn plaintext_to_a_tls_only_host_is_redirected_before_routing() {
    use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
    let rc = RouteConfiguration {
        name: "tls".into(),
        virtual_hosts: vec![PbVhost {
            name: "secure".into(),
            domains: vec!["shop.example.com".into()],
            require_tls: TlsRequirementType::All as i32,
            routes: vec![r("all", PathSpecifier::Prefix("/".into()), to("shop"))],
            ..Default::default()
        }],
        ..Default::default()
    };
    let t = route_config_from_proto(&rc).expect("valid");
    assert_eq!(
        cluster_of(&go(&t, "shop.example.com:8080", "/cart?id=1", &[], 0.1)),
        "tls-redirect https://shop.example.com/cart?id=1"
    );
    let h = http::HeaderMap::new();
    let meta = RequestMeta {
        method: &Method::GET,
        authority: "shop.example.com",
        path_and_query: "/cart",
        scheme: "https",
        headers: &h,
    };
    assert_eq!(cluster_of(&decide(&t, &meta, 0.1)), "shop");
}

#[test]
fn routing_table() {
    let t = table();
    // (authority, path, headers, weighted draw, expected decision)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], f64, &'a str);
    let cases: &[Case<'_>] = &[
        ("reviews:9080", "/", &[("end-user", "jason")], 0.0, "v2"),
        ("reviews", "/", &[("end-user", "jason")], 0.99, "v2"),
        ("REVIEWS.default.svc.cluster.local", "/x", &[], 0.5, "v1"),
        ("reviews", "/x", &[], 0.95, "v2"),
        ("reviews:1234", "/x", &[], 0.1, "v1"),
        ("reviews", "/inv", &[], 0.1, "not-canary"),
        ("reviews", "/inv", &[("x-canary", "1")], 0.1, "v1"),
        ("reviews", "/q?debug=true", &[], 0.1, "query"),
        ("reviews", "/q?debug=false", &[], 0.1, "v1"),
        ("reviews", "/q", &[], 0.1, "v1"),
        ("reviews", "/exact", &[], 0.1, "ci"),
        ("reviews", "/EXACT", &[], 0.1, "ci"),
        ("reviews", "/old/a/b?x=1", &[], 0.1, "rw /new/a/b?x=1"),
        ("reviews", "/users/42", &[], 0.1, "users /u/42"),
        ("reviews", "/users/abc", &[], 0.1, "v1"),
        ("reviews", "/api", &[], 0.1, "api"),
        ("reviews", "/api/v1", &[], 0.1, "api"),
        ("reviews", "/apiv1", &[], 0.1, "v1"),
        (
            "reviews:9080",
            "/login?next=1",
            &[],
            0.1,
            "redirect 308 https://reviews/login?next=1",
        ),
        (
            "reviews",
            "/moved/a",
            &[],
            0.1,
            "redirect 301 http://new.example/here/a",
        ),
        ("reviews", "/health", &[], 0.1, "direct 204"),
        ("a.example.com", "/", &[], 0.1, "suffix"),
        ("a.api.example.com:443", "/", &[], 0.1, "api-suffix"),
        ("example.com", "/", &[], 0.1, "any"),
        ("internal.corp", "/", &[], 0.1, "prefix"),
        ("other", "/", &[], 0.1, "any"),
    ];
    for (authority, path, headers, draw, want) in cases {
        let got = cluster_of(&go(&t, authority, path, headers, *draw));
        assert_eq!(&got, want, "{authority} {path} {headers:?}");
    }
}

#[test]
fn no_vhost_is_no_route() {
    let mut t = table();
    t.virtual_hosts.retain(|v| v.name != "any");
    assert_eq!(go(&t, "nowhere", "/", &[], 0.1), Decision::NoRoute);
}

#[test]
fn weighted_proportions_follow_the_draw() {
    let t = table();
    let n = 10_000;
    let v2 = (0..n)
        .filter(|i| cluster_of(&go(&t, "reviews", "/p", &[], f64::from(*i) / f64::from(n))) == "v2")
        .count();
    assert_eq!(v2, 1000);
}

#[test]
fn bad_configs_are_refused_with_the_field() {
    let mut rc = RouteConfiguration {
        name: "bad".into(),
        virtual_hosts: vec![PbVhost {
            name: "v".into(),
            domains: vec!["a".into()],
            routes: vec![r(
                "x",
                PathSpecifier::SafeRegex(RegexMatcher {
                    regex: "(".into(),
                    ..Default::default()
                }),
                to("c"),
            )],
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = route_config_from_proto(&rc).expect_err("bad regex");
    assert!(e.field.contains("virtual_hosts[0].routes[0].match"), "{e}");
    rc.virtual_hosts[0].routes = vec![r("x", PathSpecifier::Prefix("/".into()), to("c"))];
    rc.virtual_hosts.push(rc.virtual_hosts[0].clone());
    let e = route_config_from_proto(&rc).expect_err("duplicate domain");
    assert!(e.reason.contains("also in"), "{e}");
    rc.virtual_hosts.pop();
    rc.virtual_hosts[0].domains = vec!["a*b".into()];
    assert!(route_config_from_proto(&rc).is_err());
}
