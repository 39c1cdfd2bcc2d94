//! Per-resource checks of the networking kinds.

use super::*;

pub(super) fn virtual_service(spec: &VirtualServiceSpec, out: &mut Issues) {
    if spec.hosts.is_empty() {
        out.push(
            Code::InvalidField,
            "spec",
            "a VirtualService needs at least one entry in spec.hosts",
        );
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if h.trim().is_empty() {
            out.push(
                Code::InvalidField,
                format!("spec.hosts[{i}]"),
                "host is empty",
            );
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
            for (field, map) in [("headers", &mr.headers), ("queryParams", &mr.query_params)] {
                for (k, sm) in map {
                    check_string_match(sm, &format!("{mp}.{field}.{k}"), out);
                }
            }
            if let Some(p) = mr.port {
                check_port(p, &format!("{mp}.port"), out);
            }
        }
        for (d, dest) in route.route.iter().enumerate() {
            check_destination(
                &dest.destination,
                &format!("{base}.route[{d}].destination"),
                out,
            );
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
            check_duration(
                &retries.per_try_timeout,
                &format!("{base}.retries.perTryTimeout"),
                out,
            );
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
                check_duration(
                    &delay.fixed_delay,
                    &format!("{base}.fault.delay.fixedDelay"),
                    out,
                );
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
        out.push(
            Code::InvalidField,
            format!("{path}.host"),
            "destination host is empty",
        );
    }
    if let Some(p) = &dest.port {
        check_port(p.number, &format!("{path}.port.number"), out);
    }
}

fn traffic_policy(tp: &TrafficPolicy, path: &str, out: &mut Issues) {
    if tp.tunnel.is_some() {
        out.push(
            Code::IgnoredField,
            format!("{path}.tunnel"),
            "tunnelling TCP over HTTP CONNECT/POST is not supported; connections to this destination go directly, not through the tunnel",
        );
    }
    if let Some(b) = &tp.retry_budget {
        let p = format!("{path}.retryBudget");
        if b.percent.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
            out.push(
                Code::InvalidPercentage,
                format!("{p}.percent"),
                "percent must be within 0 and 100",
            );
        }
        if b.budget_interval.is_some() {
            out.push(
                Code::InvalidField,
                format!("{p}.budgetInterval"),
                "a budget over a time window is not supported; the budget counts the requests in flight",
            );
        }
    }
    load_balancer(&tp.load_balancer, &format!("{path}.loadBalancer"), out);
    connection_pool(&tp.connection_pool, &format!("{path}.connectionPool"), out);
    outlier_detection(
        &tp.outlier_detection,
        &format!("{path}.outlierDetection"),
        out,
    );
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
        check_duration(
            &tcp.connect_timeout,
            &format!("{path}.tcp.connectTimeout"),
            out,
        );
        check_duration(&tcp.idle_timeout, &format!("{path}.tcp.idleTimeout"), out);
        if let Some(ka) = &tcp.tcp_keepalive {
            check_duration(&ka.time, &format!("{path}.tcp.tcpKeepalive.time"), out);
            check_duration(
                &ka.interval,
                &format!("{path}.tcp.tcpKeepalive.interval"),
                out,
            );
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
    check_duration(
        &od.base_ejection_time,
        &format!("{path}.baseEjectionTime"),
        out,
    );
}

pub(super) fn destination_rule(spec: &DestinationRuleSpec, out: &mut Issues) {
    if spec.host.trim().is_empty() {
        out.push(
            Code::InvalidField,
            "spec",
            "a DestinationRule needs spec.host",
        );
    }
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(tp, "spec.trafficPolicy", out);
    }
    let mut seen = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            out.push(
                Code::InvalidField,
                format!("{p}.name"),
                "subset name is empty",
            );
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

pub(super) fn gateway(spec: &GatewaySpec, out: &mut Issues) {
    if spec.servers.is_empty() {
        out.push(
            Code::InvalidField,
            "spec",
            "a Gateway needs at least one server",
        );
    }
    for (i, server) in spec.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        check_port(server.port.number, &format!("{p}.port.number"), out);
        if server.hosts.is_empty() {
            out.push(
                Code::InvalidField,
                &p,
                "a Gateway server needs at least one host",
            );
        }
    }
}

pub(super) fn service_entry(spec: &ServiceEntrySpec, out: &mut Issues) {
    if spec.hosts.is_empty() {
        out.push(
            Code::InvalidField,
            "spec",
            "a ServiceEntry needs at least one host",
        );
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

pub(super) fn workload_entry(spec: &WorkloadEntrySpec, path: &str, out: &mut Issues) {
    if spec.address.as_deref().is_none_or(str::is_empty) && spec.network.is_none() {
        out.push(
            Code::InvalidField,
            path,
            "a workload entry needs an address",
        );
    }
    for (name, port) in &spec.ports {
        check_port(*port, &format!("{path}.ports.{name}"), out);
    }
}

pub(super) fn sidecar(spec: &SidecarSpec, out: &mut Issues) {
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
        check_port(
            ing.port.number,
            &format!("spec.ingress[{i}].port.number"),
            out,
        );
    }
}
