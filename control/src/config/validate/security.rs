//! Per-resource checks of the security kinds and MeshConfig.

use std::collections::BTreeSet;

use super::*;

pub(super) fn peer_authentication(spec: &PeerAuthenticationSpec, out: &mut Issues) {
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_selector {
        out.push(
            Code::InvalidField,
            "spec.portLevelMtls",
            "portLevelMtls requires a workload selector",
        );
    }
    for port in spec.port_level_mtls.keys() {
        check_port(*port, &format!("spec.portLevelMtls.{port}"), out);
    }
}

pub(super) fn authorization_policy(spec: &AuthorizationPolicySpec, out: &mut Issues) {
    let action = spec.action();
    match (action, &spec.provider) {
        (AuthorizationAction::Custom, None) => out.push(
            Code::InvalidField,
            "spec.action",
            "action CUSTOM needs spec.provider",
        ),
        (a, Some(_)) if a != AuthorizationAction::Custom => out.push(
            Code::InvalidField,
            "spec.provider",
            "spec.provider is only used with action CUSTOM",
        ),
        _ => {}
    }
    if let Some(rules) = &spec.rules {
        if rules.is_empty() && action == AuthorizationAction::Allow {
            out.push(
                Code::AuthzAllowsNothing,
                "spec.rules",
                "ALLOW policy with `rules: []` matches no request, so it denies every request to the workloads it selects; remove `rules` to state allow-nothing explicitly, or add rules",
            );
        }
        for (r, rule) in rules.iter().enumerate() {
            let p = format!("spec.rules[{r}]");
            if rule.is_empty() {
                let effect = match action {
                    AuthorizationAction::Allow => "allows every request",
                    AuthorizationAction::Deny => "denies every request",
                    AuthorizationAction::Audit => "audits every request",
                    AuthorizationAction::Custom => "sends every request to the provider",
                };
                out.push(
                    Code::AuthzMatchesEverything,
                    &p,
                    format!("empty rule matches every request, so this {action:?} policy {effect} to the workloads it selects"),
                );
            }
            for (f, from) in rule.from.iter().enumerate() {
                if from.source.as_ref().is_none_or(Source::is_empty) {
                    out.push(
                        Code::InvalidField,
                        format!("{p}.from[{f}]"),
                        "`from` entry has an empty source; it would match nothing (Istio rejects it)",
                    );
                }
            }
            for (t, to) in rule.to.iter().enumerate() {
                if to.operation.as_ref().is_none_or(Operation::is_empty) {
                    out.push(
                        Code::InvalidField,
                        format!("{p}.to[{t}]"),
                        "`to` entry has an empty operation; it would match nothing (Istio rejects it)",
                    );
                }
            }
            for (w, cond) in rule.when.iter().enumerate() {
                if cond.key.is_empty() {
                    out.push(
                        Code::InvalidField,
                        format!("{p}.when[{w}]"),
                        "condition needs a key",
                    );
                }
                if cond.values.is_empty() && cond.not_values.is_empty() {
                    out.push(
                        Code::InvalidField,
                        format!("{p}.when[{w}]"),
                        "condition needs values or notValues",
                    );
                }
            }
        }
    }
}

pub(super) fn request_authentication(spec: &RequestAuthenticationSpec, out: &mut Issues) {
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        if rule.issuer.trim().is_empty() {
            out.push(
                Code::JwtRuleWithoutIssuer,
                &p,
                "JWT rule has no issuer; every rule must name the `iss` it accepts",
            );
        }
        let issuer = &rule.issuer;
        if !issuer.trim().is_empty()
            && (issuer.trim() != issuer || issuer.chars().any(char::is_control))
        {
            out.push(
                Code::JwtIssuerMalformed,
                format!("{p}.issuer"),
                format!("issuer {issuer:?} has surrounding whitespace or control characters; it must equal the tokens' `iss` exactly"),
            );
        }
        if rule.audiences.is_empty() {
            out.push(
                Code::JwtRuleWithoutAudiences,
                format!("{p}.audiences"),
                "no audiences: any token this issuer signed is accepted, whatever service it was minted for; list the audiences this workload accepts",
            );
        }
        if rule.jwks.is_none() && rule.jwks_uri.is_none() {
            out.push(
                Code::JwksMissing,
                &p,
                "neither jwks nor jwksUri is set; Isthmus does not discover keys from the issuer (OpenID discovery), so every token will be rejected",
            );
        }
        if rule.jwks.is_some() && rule.jwks_uri.is_some() {
            out.push(
                Code::JwksConflict,
                format!("{p}.jwks"),
                "set either jwks or jwksUri, not both",
            );
        }
        if let Some(uri) = &rule.jwks_uri {
            if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                out.push(
                    Code::InvalidField,
                    format!("{p}.jwksUri"),
                    format!("jwksUri {uri:?} is not an http(s) URL"),
                );
            }
        }
        if let Some(jwks) = &rule.jwks {
            if let Err(why) = validate_jwks(jwks) {
                out.push(Code::InvalidJwks, format!("{p}.jwks"), why);
            }
        }
        check_duration(&rule.timeout, &format!("{p}.timeout"), out);
    }
}

pub(super) fn mesh_config(spec: &MeshConfigSpec, out: &mut Issues) {
    super::telemetry::mesh(spec, out);
    if !is_dns1123_label(&spec.cluster_id) {
        out.push(
            Code::InvalidField,
            "spec.clusterId",
            format!(
                "clusterId {:?} must be a DNS-1123 label (lower case letters, digits, '-')",
                spec.cluster_id
            ),
        );
    }
    if let Some(td) = &spec.trust_domain {
        if !is_dns1123_subdomain(td) {
            out.push(
                Code::InvalidField,
                "spec.trustDomain",
                format!("trustDomain {td:?} is not a valid DNS name"),
            );
        }
    }
    if let Some(fed) = &spec.federation {
        if let Some(listen) = &fed.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                out.push(
                    Code::InvalidField,
                    "spec.federation.listen",
                    format!("listen {listen:?} is not an IP:port address"),
                );
            }
        }
        let mut ids = BTreeSet::new();
        for (i, peer) in fed.peers.iter().enumerate() {
            let p = format!("spec.federation.peers[{i}]");
            if peer.id == spec.cluster_id {
                out.push(
                    Code::InvalidField,
                    format!("{p}.id"),
                    "a peer cannot have this cluster's own clusterId",
                );
            } else if !ids.insert(peer.id.as_str()) {
                out.push(
                    Code::InvalidField,
                    format!("{p}.id"),
                    format!("peer {:?} is listed twice", peer.id),
                );
            }
            let port_ok = peer.address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                out.push(
                    Code::InvalidField,
                    format!("{p}.address"),
                    format!("peer address {:?} must be host:port", peer.address),
                );
            }
        }
    }
}
