//! Checks one resource on its own, as Istio's validating webhook would.
//! Cross-resource checks live in `crate::analyze`. Each issue carries a
//! field path (`spec.http[0].route[1].weight`) that the reader turns into a
//! line and column.

use std::collections::BTreeSet;

use crate::analyze::Code;

use super::*;

mod jwks;

pub use jwks::validate_jwks;

/// One problem found in one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub code: Code,
    /// Dotted field path inside the document, e.g. `spec.hosts[0]`.
    pub path: String,
    pub message: String,
}

struct Issues(Vec<Issue>);

impl Issues {
    fn push(&mut self, code: Code, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            code,
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates one resource; an empty result means it is acceptable. Issues
/// with an Error-severity code make the file source reject the document.
pub fn validate(resource: &Resource) -> Vec<Issue> {
    let mut out = Issues(Vec::new());
    validate_meta(resource.metadata(), &mut out);
    match resource {
        Resource::VirtualService(o) => virtual_service(&o.spec, &mut out),
        Resource::DestinationRule(o) => destination_rule(&o.spec, &mut out),
        Resource::Gateway(o) => gateway(&o.spec, &mut out),
        Resource::ServiceEntry(o) => service_entry(&o.spec, &mut out),
        Resource::WorkloadEntry(o) => workload_entry(&o.spec, "spec", &mut out),
        Resource::Sidecar(o) => sidecar(&o.spec, &mut out),
        Resource::PeerAuthentication(o) => peer_authentication(&o.spec, &mut out),
        Resource::AuthorizationPolicy(o) => authorization_policy(&o.spec, &mut out),
        Resource::RequestAuthentication(o) => request_authentication(&o.spec, &mut out),
        Resource::ServiceExport(_) => {}
        Resource::ServiceImport(o) => {
            for (i, p) in o.spec.ports.iter().enumerate() {
                check_port(p.port, &format!("spec.ports[{i}].port"), &mut out);
            }
        }
        Resource::MeshConfig(o) => mesh_config(&o.spec, &mut out),
    }
    out.0
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn validate_meta(meta: &ObjectMeta, out: &mut Issues) {
    if meta.name.is_empty() {
        out.push(Code::MissingTypeInfo, "metadata", "metadata.name is required");
    } else if !is_dns1123_subdomain(&meta.name) {
        out.push(
            Code::InvalidField,
            "metadata.name",
            format!(
                "name {:?} is not a valid DNS-1123 subdomain (lower case letters, digits, '-' and '.')",
                meta.name
            ),
        );
    }
    if let Some(ns) = &meta.namespace {
        if !is_dns1123_label(ns) {
            out.push(
                Code::InvalidField,
                "metadata.namespace",
                format!("namespace {ns:?} is not a valid DNS-1123 label"),
            );
        }
    }
}

fn check_port(port: u32, path: &str, out: &mut Issues) {
    if port == 0 || port > 65535 {
        out.push(
            Code::InvalidField,
            path,
            format!("port {port} is out of range 1-65535"),
        );
    }
}

fn check_string_match(m: &StringMatch, path: &str, out: &mut Issues) {
    match m.set_count() {
        1 => {}
        0 => out.push(
            Code::InvalidStringMatch,
            path,
            "string match is empty: set one of exact, prefix or regex",
        ),
        _ => out.push(
            Code::InvalidStringMatch,
            path,
            "string match sets more than one of exact, prefix and regex",
        ),
    }
}

/// Istio refuses durations below one millisecond (other than zero).
fn check_duration(d: &Option<Duration>, path: &str, out: &mut Issues) {
    if let Some(d) = d {
        let v = d.as_std();
        if !v.is_zero() && v < std::time::Duration::from_millis(1) {
            out.push(
                Code::InvalidDuration,
                path,
                format!("duration {d} is shorter than the 1ms minimum"),
            );
        }
    }
}

fn check_weights(weights: &[Option<i32>], path: &str, out: &mut Issues) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w {
            if *w < 0 {
                out.push(
                    Code::WeightsNotHundred,
                    format!("{path}[{i}].weight"),
                    format!("weight {w} is negative"),
                );
                return;
            }
        }
    }
    if weights.len() < 2 {
        return;
    }
    let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
    if sum != 100 {
        out.push(
            Code::WeightsNotHundred,
            path,
            format!(
                "destination weights sum to {sum}, not 100 ({})",
                weights
                    .iter()
                    .map(|w| w.map_or("unset".to_string(), |w| w.to_string()))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        );
    }
}

fn virtual_service(spec: &VirtualServiceSpec, out: &mut Issues) {
    if spec.hosts.is_empty() {
        out.push(
            Code::InvalidField,
            "spec",
            "a VirtualService needs at least one entry in spec.hosts",
        );
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if h.trim().is_empty() {
            out.push(Code::InvalidField, format!("spec.hosts[{i}]"), "host is empty");
        }
    }
    for (r, route) in spec.http.iter().enumerate() {
        let base = format!("spec.http[{r}]");
        if route.route.is_empty()
            && route.redirect.is_none()
            && route.direct_response.is_none()
            && route.delegate.is_none()
        {
            out.push(
                Code::InvalidField,
                &base,
                "HTTP route has none of route, redirect, directResponse or delegate",
            );
        }
        for (m, mr) in route.matches.iter().enumerate() {
            let mp = format!("{base}.match[{m}]");
            for (field, sm) in [
                ("uri", &mr.uri),
                ("scheme", &mr.scheme),
                ("method", &mr.method),
                ("authority", &mr.authority),
            ] {
                if let Some(sm) = sm {
                    check_string_match(sm, &format!("{mp}.{field}"), out);
                }
            }
            for (field, map) in [
                ("headers", &mr.headers),
                ("queryParams", &mr.query_params),
            ] {
                for (k, sm) in map {
                    check_string_match(sm, &format!("{mp}.{field}.{k}"), out);
                }
            }
            if let Some(p) = mr.port {
                check_port(p, &format!("{mp}.port"), out);
            }
        }
        for (d, dest) in route.route.iter().enumerate() {
            check_destination(&dest.destination, &format!("{base}.route[{d}].destination"), out);
        }
        let weights: Vec<Option<i32>> = route.route.iter().map(|d| d.weight).collect();
        check_weights(&weights, &format!("{base}.route"), out);
        check_duration(&route.timeout, &format!("{base}.timeout"), out);
        if let Some(retries) = &route.retries {
            if retries.attempts.is_some_and(|a| a < 0) {
                out.push(
                    Code::InvalidField,
                    format!("{base}.retries.attempts"),
                    "retry attempts cannot be negative",
                );
            }
            check_duration(&retries.per_try_timeout, &format!("{base}.retries.perTryTimeout"), out);
        }
        if let Some(fault) = &route.fault {
            if let Some(delay) = &fault.delay {
                if delay.fixed_delay.is_none() {
                    out.push(
                        Code::InvalidField,
                        format!("{base}.fault.delay"),
                        "fault delay needs fixedDelay",
                    );
                }
                check_duration(&delay.fixed_delay, &format!("{base}.fault.delay.fixedDelay"), out);
            }
            if let Some(abort) = &fault.abort {
                match (abort.http_status, &abort.grpc_status) {
                    (Some(s), _) if !(200..=599).contains(&s) => out.push(
                        Code::InvalidField,
                        format!("{base}.fault.abort.httpStatus"),
                        format!("abort httpStatus {s} is not an HTTP status (200-599)"),
                    ),
                    (None, None) => out.push(
                        Code::InvalidField,
                        format!("{base}.fault.abort"),
                        "fault abort needs httpStatus or grpcStatus",
                    ),
                    _ => {}
                }
            }
        }
        if let Some(cors) = &route.cors_policy {
            for (o, sm) in cors.allow_origins.iter().enumerate() {
                check_string_match(sm, &format!("{base}.corsPolicy.allowOrigins[{o}]"), out);
            }
        }
        if let Some(mirror) = &route.mirror {
            check_destination(mirror, &format!("{base}.mirror"), out);
        }
    }
    for (kind, routes) in [
        ("tls", spec.tls.iter().map(|r| &r.route).collect::<Vec<_>>()),
        ("tcp", spec.tcp.iter().map(|r| &r.route).collect::<Vec<_>>()),
    ] {
        for (r, dests) in routes.into_iter().enumerate() {
            let base = format!("spec.{kind}[{r}].route");
            if dests.is_empty() {
                out.push(
                    Code::InvalidField,
                    format!("spec.{kind}[{r}]"),
                    "route has no destinations",
                );
            }
            for (d, dest) in dests.iter().enumerate() {
                check_destination(&dest.destination, &format!("{base}[{d}].destination"), out);
            }
            let weights: Vec<Option<i32>> = dests.iter().map(|d| d.weight).collect();
            check_weights(&weights, &base, out);
        }
    }
}

fn check_destination(dest: &Destination, path: &str, out: &mut Issues) {
    if dest.host.trim().is_empty() {
        out.push(Code::InvalidField, format!("{path}.host"), "destination host is empty");
    }
    if let Some(p) = &dest.port {
        check_port(p.number, &format!("{path}.port.number"), out);
    }
}

fn traffic_policy(tp: &TrafficPolicy, path: &str, out: &mut Issues) {
    load_balancer(&tp.load_balancer, &format!("{path}.loadBalancer"), out);
    connection_pool(&tp.connection_pool, &format!("{path}.connectionPool"), out);
    outlier_detection(&tp.outlier_detection, &format!("{path}.outlierDetection"), out);
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = format!("{path}.portLevelSettings[{i}]");
        match &pl.port {
            Some(port) => check_port(port.number, &format!("{p}.port.number"), out),
            None => out.push(Code::InvalidField, &p, "port-level settings need a port"),
        }
        load_balancer(&pl.load_balancer, &format!("{p}.loadBalancer"), out);
        connection_pool(&pl.connection_pool, &format!("{p}.connectionPool"), out);
        outlier_detection(&pl.outlier_detection, &format!("{p}.outlierDetection"), out);
    }
}

fn load_balancer(lb: &Option<LoadBalancerSettings>, path: &str, out: &mut Issues) {
    let Some(lb) = lb else { return };
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        out.push(
            Code::InvalidField,
            path,
            "set either simple or consistentHash, not both",
        );
    }
    if let Some(locality) = &lb.locality_lb_setting {
        for (i, d) in locality.distribute.iter().enumerate() {
            let sum: u32 = d.to.values().sum();
            if sum != 100 {
                out.push(
                    Code::WeightsNotHundred,
                    format!("{path}.localityLbSetting.distribute[{i}].to"),
                    format!("locality weights sum to {sum}, not 100"),
                );
            }
        }
        if !locality.distribute.is_empty() && !locality.failover.is_empty() {
            out.push(
                Code::InvalidField,
                format!("{path}.localityLbSetting"),
                "set either distribute or failover, not both",
            );
        }
    }
}

fn connection_pool(cp: &Option<ConnectionPoolSettings>, path: &str, out: &mut Issues) {
    let Some(cp) = cp else { return };
    if let Some(tcp) = &cp.tcp {
        if tcp.max_connections.is_some_and(|v| v < 0) {
            out.push(
                Code::InvalidField,
                format!("{path}.tcp.maxConnections"),
                "maxConnections cannot be negative",
            );
        }
        check_duration(&tcp.connect_timeout, &format!("{path}.tcp.connectTimeout"), out);
        check_duration(&tcp.idle_timeout, &format!("{path}.tcp.idleTimeout"), out);
        if let Some(ka) = &tcp.tcp_keepalive {
            check_duration(&ka.time, &format!("{path}.tcp.tcpKeepalive.time"), out);
            check_duration(&ka.interval, &format!("{path}.tcp.tcpKeepalive.interval"), out);
        }
    }
    if let Some(http) = &cp.http {
        for (field, v) in [
            ("http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http2MaxRequests", http.http2_max_requests),
            ("maxRequestsPerConnection", http.max_requests_per_connection),
            ("maxRetries", http.max_retries),
            ("maxConcurrentStreams", http.max_concurrent_streams),
        ] {
            if v.is_some_and(|v| v < 0) {
                out.push(
                    Code::InvalidField,
                    format!("{path}.http.{field}"),
                    format!("{field} cannot be negative"),
                );
            }
        }
        check_duration(&http.idle_timeout, &format!("{path}.http.idleTimeout"), out);
    }
}

fn outlier_detection(od: &Option<OutlierDetection>, path: &str, out: &mut Issues) {
    let Some(od) = od else { return };
    check_duration(&od.interval, &format!("{path}.interval"), out);
    check_duration(&od.base_ejection_time, &format!("{path}.baseEjectionTime"), out);
}

fn destination_rule(spec: &DestinationRuleSpec, out: &mut Issues) {
    if spec.host.trim().is_empty() {
        out.push(Code::InvalidField, "spec", "a DestinationRule needs spec.host");
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(tp, "spec.trafficPolicy", out);
    }
    let mut seen = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            out.push(Code::InvalidField, format!("{p}.name"), "subset name is empty");
        } else if !seen.insert(subset.name.as_str()) {
            out.push(
                Code::DuplicateSubset,
                format!("{p}.name"),
                format!("subset {:?} is defined more than once", subset.name),
            );
        }
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(tp, &format!("{p}.trafficPolicy"), out);
        }
    }
}

fn gateway(spec: &GatewaySpec, out: &mut Issues) {
    if spec.servers.is_empty() {
        out.push(Code::InvalidField, "spec", "a Gateway needs at least one server");
    }
    for (i, server) in spec.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        check_port(server.port.number, &format!("{p}.port.number"), out);
        if server.hosts.is_empty() {
            out.push(Code::InvalidField, &p, "a Gateway server needs at least one host");
        }
    }
}

fn service_entry(spec: &ServiceEntrySpec, out: &mut Issues) {
    if spec.hosts.is_empty() {
        out.push(Code::InvalidField, "spec", "a ServiceEntry needs at least one host");
    }
    for (i, port) in spec.ports.iter().enumerate() {
        check_port(port.number, &format!("spec.ports[{i}].number"), out);
    }
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        out.push(
            Code::InvalidField,
            "spec.workloadSelector",
            "set either workloadSelector or endpoints, not both",
        );
    }
    for (i, ep) in spec.endpoints.iter().enumerate() {
        workload_entry(ep, &format!("spec.endpoints[{i}]"), out);
    }
}

fn workload_entry(spec: &WorkloadEntrySpec, path: &str, out: &mut Issues) {
    if spec.address.as_deref().is_none_or(str::is_empty) && spec.network.is_none() {
        out.push(Code::InvalidField, path, "a workload entry needs an address");
    }
    for (name, port) in &spec.ports {
        check_port(*port, &format!("{path}.ports.{name}"), out);
    }
}

fn sidecar(spec: &SidecarSpec, out: &mut Issues) {
    for (i, eg) in spec.egress.iter().enumerate() {
        if eg.hosts.is_empty() {
            out.push(
                Code::InvalidField,
                format!("spec.egress[{i}]"),
                "egress listener needs hosts in namespace/dnsName form",
            );
        }
        for (h, host) in eg.hosts.iter().enumerate() {
            if !host.contains('/') {
                out.push(
                    Code::InvalidField,
                    format!("spec.egress[{i}].hosts[{h}]"),
                    format!("egress host {host:?} must be namespace/dnsName (e.g. \"./*\" or \"istio-system/*\")"),
                );
            }
        }
    }
    for (i, ing) in spec.ingress.iter().enumerate() {
        check_port(ing.port.number, &format!("spec.ingress[{i}].port.number"), out);
    }
}

fn peer_authentication(spec: &PeerAuthenticationSpec, out: &mut Issues) {
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

fn authorization_policy(spec: &AuthorizationPolicySpec, out: &mut Issues) {
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
                    out.push(Code::InvalidField, format!("{p}.when[{w}]"), "condition needs a key");
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

fn request_authentication(spec: &RequestAuthenticationSpec, out: &mut Issues) {
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let p = format!("spec.jwtRules[{i}]");
        if rule.issuer.trim().is_empty() {
            out.push(
                Code::JwtRuleWithoutIssuer,
                &p,
                "JWT rule has no issuer; every rule must name the `iss` it accepts",
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

fn mesh_config(spec: &MeshConfigSpec, out: &mut Issues) {
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
            let port_ok = peer
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
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
