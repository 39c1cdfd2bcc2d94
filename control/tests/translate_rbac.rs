//! The sidecar's inbound listeners carry the AuthorizationPolicies that
//! apply to the workload, as Envoy RBAC filters in Istio's places: HTTP RBAC
//! (DENY, then ALLOW) before the router, network RBAC before tcp_proxy.

mod translate_support;

use std::path::Path;

use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use isthmus_xds::TypeUrl;
use prost::Message;

fn listener(name: &str) -> Listener {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/security/translate-rbac");
    let loaded = translate_support::load(&dir);
    let all = translate_support::translate_all(&loaded);
    let r = all[&TypeUrl::Listener]
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("listener {name} generated"));
    Listener::decode(r.body.value.as_slice()).expect("listener decodes")
}

fn policy_names(rules: &envoy_types::pb::envoy::config::rbac::v3::Rbac) -> Vec<String> {
    let mut v: Vec<String> = rules.policies.keys().cloned().collect();
    v.sort();
    v
}

#[test]
fn http_inbound_has_deny_then_allow_before_router() {
    let l = listener("inbound_10.0.2.1_9080");
    assert!(!l.filter_chains.is_empty());
    for chain in &l.filter_chains {
        assert_eq!(chain.filters.len(), 1, "HTTP chains enforce inside the HCM");
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!("typed config");
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
        let rbac: Vec<(Action, Vec<String>)> = hcm
            .http_filters
            .iter()
            .filter(|f| f.name == "envoy.filters.http.rbac")
            .map(|f| {
                let Some(http_filter::ConfigType::TypedConfig(a)) = &f.config_type else {
                    panic!("typed config");
                };
                let r = HttpRbac::decode(a.value.as_slice()).expect("rbac");
                let rules = r.rules.expect("rules");
                (
                    Action::try_from(rules.action).expect("action"),
                    policy_names(&rules),
                )
            })
            .collect();
        assert_eq!(
            rbac,
            vec![
                (
                    Action::Deny,
                    vec!["ns[istio-system]-policy[mesh-deny-debug]-rule[0]".to_string()]
                ),
                (
                    Action::Allow,
                    vec!["ns[shop]-policy[from-frontend]-rule[0]".to_string()]
                ),
            ],
            "only the mesh-wide and the selecting policies apply"
        );
        let last = hcm.http_filters.last().expect("filters");
        assert_eq!(last.name, "envoy.filters.http.router");
        let rbac_at = hcm
            .http_filters
            .iter()
            .position(|f| f.name == "envoy.filters.http.rbac")
            .expect("rbac present");
        if let Some(jwt_at) = hcm
            .http_filters
            .iter()
            .position(|f| f.name == "envoy.filters.http.jwt_authn")
        {
            assert!(jwt_at < rbac_at, "JWT authentication runs before RBAC");
        }
    }
}

#[test]
fn tcp_inbound_has_network_rbac_before_tcp_proxy() {
    let l = listener("inbound_10.0.2.1_9091");
    for chain in &l.filter_chains {
        let names: Vec<&str> = chain.filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "envoy.filters.network.rbac",
                "envoy.filters.network.rbac",
                "envoy.filters.network.tcp_proxy"
            ]
        );
        let actions: Vec<(Action, Vec<String>)> = chain.filters[..2]
            .iter()
            .map(|f| {
                let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else {
                    panic!("typed config");
                };
                let rules = NetworkRbac::decode(a.value.as_slice())
                    .expect("network rbac")
                    .rules
                    .expect("rules");
                (
                    Action::try_from(rules.action).expect("action"),
                    policy_names(&rules),
                )
            })
            .collect();
        // The DENY on paths keeps its rule without the HTTP-only field
        // (it denies every connection: fail closed); the namespace ALLOW applies.
        assert_eq!(
            actions,
            vec![
                (
                    Action::Deny,
                    vec!["ns[istio-system]-policy[mesh-deny-debug]-rule[0]".to_string()]
                ),
                (
                    Action::Allow,
                    vec!["ns[shop]-policy[from-frontend]-rule[0]".to_string()]
                ),
            ]
        );
    }
}
