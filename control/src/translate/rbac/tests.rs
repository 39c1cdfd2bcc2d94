use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::condition::claim_path;
use super::*;
use crate::config::ObjectMeta;

fn policy(ns: &str, name: &str, yaml: &str) -> Object<AuthorizationPolicySpec> {
    Object {
        api_version: "security.istio.io/v1".into(),
        kind: "AuthorizationPolicy".into(),
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: serde_yaml_ng::from_str(yaml).expect("test policy parses"),
        status: None,
    }
}

fn action_of(r: &Rbac) -> Action {
    Action::try_from(r.action).expect("valid action")
}

#[test]
fn filters_in_istio_order_with_rule_names() {
    let allow = policy(
        "default",
        "read",
        "rules:\n- from:\n  - source: {principals: [cluster.local/ns/a/sa/x]}\n  to:\n  - operation: {methods: [GET]}\n",
    );
    let deny = policy(
        "istio-system",
        "block",
        "action: DENY\nrules:\n- to:\n  - operation: {paths: [/admin*]}\n",
    );
    let audit = policy("default", "watch", "action: AUDIT\nrules: [{}]\n");
    let rules = build_rules(&[&allow, &deny, &audit], Layer::Http);
    let actions: Vec<Action> = rules.iter().map(action_of).collect();
    assert_eq!(actions, vec![Action::Log, Action::Deny, Action::Allow]);
    let allow_rules = &rules[2];
    let p = &allow_rules.policies["ns[default]-policy[read]-rule[0]"];
    match &p.principals[0].identifier {
        Some(principal::Identifier::Authenticated(a)) => assert_eq!(
            a.principal_name
                .as_ref()
                .and_then(|m| m.match_pattern.clone()),
            Some(MatchPattern::Exact(
                "spiffe://cluster.local/ns/a/sa/x".into()
            ))
        ),
        other => panic!("expected authenticated principal, got {other:?}"),
    }
    assert!(rules[1]
        .policies
        .contains_key("ns[istio-system]-policy[block]-rule[0]"));
}

#[test]
fn empty_allow_policy_yields_allow_filter_without_policies() {
    let nothing = policy("default", "nothing", "{}\n");
    let rules = build_rules(&[&nothing], Layer::Http);
    assert_eq!(rules.len(), 1);
    assert_eq!(action_of(&rules[0]), Action::Allow);
    assert!(rules[0].policies.is_empty(), "denies everything");
}

#[test]
fn http_only_fields_on_tcp() {
    let allow = policy(
        "default",
        "a",
        "rules:\n- to:\n  - operation: {methods: [GET]}\n- to:\n  - operation: {ports: ['9000']}\n",
    );
    let deny = policy(
        "default",
        "d",
        "action: DENY\nrules:\n- to:\n  - operation: {methods: [POST]}\n",
    );
    let rules = build_rules(&[&allow, &deny], Layer::Tcp);
    let allow_rules = rules
        .iter()
        .find(|r| action_of(r) == Action::Allow)
        .expect("allow");
    assert_eq!(
        allow_rules.policies.keys().cloned().collect::<Vec<_>>(),
        vec!["ns[default]-policy[a]-rule[1]".to_string()],
        "the method rule is dropped from ALLOW"
    );
    let deny_rules = rules
        .iter()
        .find(|r| action_of(r) == Action::Deny)
        .expect("deny");
    let p = &deny_rules.policies["ns[default]-policy[d]-rule[0]"];
    assert_eq!(
        p.permissions[0].rule,
        Some(permission::Rule::Any(true)),
        "DENY without its HTTP fields matches every connection"
    );
}

#[test]
fn condition_keys_and_selectors() {
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
    let p = policy("default", "p", "selector: {matchLabels: {app: api}}\n");
    assert!(p
        .spec
        .selector
        .as_ref()
        .is_some_and(|s| !labels_match(&s.match_labels, &labels)));
    assert!(claim_path("request.auth.claims[groups]") == Some(vec!["groups"]));
    assert!(claim_path("request.auth.claims[a][b]") == Some(vec!["a", "b"]));
    assert!(claim_path("request.auth.claims[]").is_none());
    assert!(known_condition_key("request.headers[x-user]"));
    assert!(!known_condition_key("experimental.envoy.filters.a.b[c]"));
}
