//! The routing decision: a pure function of (route table, request metadata,
//! a random draw) → what to do with the request. No I/O, so it is
//! table-tested without sockets.

use http::{HeaderMap, Method};

use crate::config::{
    Action, ClusterChoice, ForwardAction, HeaderMatchKind, PathMatch, Redirect, Route, RouteMatch,
    RouteTable, VirtualHost,
};

/// What the router needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestMeta<'a> {
    pub method: &'a Method,
    /// `:authority` / `Host`, as sent.
    pub authority: &'a str,
    /// Path with query string.
    pub path_and_query: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'t> {
    /// No virtual host or no route matched (404, response flag NR).
    NoRoute,
    /// A plaintext request to a virtual host that requires TLS: 301 to
    /// this location, before any route is matched, as Envoy does.
    TlsRedirect { location: String },
    Forward {
        vhost: &'t VirtualHost,
        route: &'t Route,
        action: &'t ForwardAction,
        /// Index into weighted clusters (0 for a single cluster).
        target: usize,
        cluster: &'t str,
        /// Rewritten path and query, when a rewrite applies.
        path: Option<String>,
    },
    Redirect {
        vhost: &'t VirtualHost,
        route: &'t Route,
        status: u16,
        location: String,
    },
    Direct {
        vhost: &'t VirtualHost,
        route: &'t Route,
        status: u16,
        body: Option<&'t str>,
    },
}

/// Routes a request; `draw` is uniform in `[0, 1)` and picks among weighted clusters.
pub fn decide<'t>(table: &'t RouteTable, req: &RequestMeta<'_>, draw: f64) -> Decision<'t> {
    let Some(vhost) = select_vhost(&table.virtual_hosts, req.authority) else {
        return Decision::NoRoute;
    };
    if vhost.require_tls && req.scheme != "https" {
        // The same host without its port, the same path and query.
        return Decision::TlsRedirect {
            location: format!(
                "https://{}{}",
                strip_port(req.authority),
                req.path_and_query
            ),
        };
    }
    let Some(route) = vhost.routes.iter().find(|r| matches(&r.matcher, req)) else {
        return Decision::NoRoute;
    };
    let (path, query) = split_query(req.path_and_query);
    match &route.action {
        Action::Direct { status, body } => Decision::Direct {
            vhost,
            route,
            status: *status,
            body: body.as_deref(),
        },
        Action::Redirect(r) => Decision::Redirect {
            vhost,
            route,
            status: r.status,
            location: redirect_location(r, &route.matcher, req, path, query),
        },
        Action::Forward(action) => {
            let (target, cluster) = match &action.clusters {
                ClusterChoice::Single(c) => (0, c.as_str()),
                ClusterChoice::Weighted(w) => {
                    let weights: Vec<f64> = w.iter().map(|t| f64::from(t.weight)).collect();
                    let i = crate::lb::priority::pick_weighted(&weights, draw).unwrap_or(0);
                    (i, w[i].cluster.as_str())
                }
            };
            let new_path = rewrite_path(action, &route.matcher, path).map(|p| match query {
                Some(q) => format!("{p}?{q}"),
                None => p,
            });
            Decision::Forward {
                vhost,
                route,
                action,
                target,
                cluster,
                path: new_path,
            }
        }
    }
}

/// Envoy's order: exact domain, then longest suffix wildcard, then longest
/// prefix wildcard, then `*`. The authority is tried as sent, then without port.
pub fn select_vhost<'t>(hosts: &'t [VirtualHost], authority: &str) -> Option<&'t VirtualHost> {
    // Hosts are nearly always sent in lower case already.
    let host: std::borrow::Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
        authority.to_ascii_lowercase().into()
    } else {
        authority.into()
    };
    if let Some(v) = select_exact_host(hosts, &host) {
        return Some(v);
    }
    let stripped = strip_port(&host);
    if stripped != host {
        if let Some(v) = select_exact_host(hosts, stripped) {
            return Some(v);
        }
    }
    hosts.iter().find(|v| v.domains.iter().any(|d| d == "*"))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.rfind("]:") {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn select_exact_host<'t>(hosts: &'t [VirtualHost], host: &str) -> Option<&'t VirtualHost> {
    if let Some(v) = hosts.iter().find(|v| v.domains.iter().any(|d| d == host)) {
        return Some(v);
    }
    let mut best: Option<(usize, &VirtualHost)> = None;
    for v in hosts {
        for d in &v.domains {
            if let Some(suffix) = d.strip_prefix('*') {
                if !suffix.is_empty()
                    && host.len() > suffix.len()
                    && host.ends_with(suffix)
                    && best.is_none_or(|(l, _)| suffix.len() > l)
                {
                    best = Some((suffix.len(), v));
                }
            }
        }
    }
    if let Some((_, v)) = best {
        return Some(v);
    }
    for v in hosts {
        for d in &v.domains {
            if let Some(prefix) = d.strip_suffix('*') {
                if !prefix.is_empty()
                    && host.len() > prefix.len()
                    && host.starts_with(prefix)
                    && best.is_none_or(|(l, _)| prefix.len() > l)
                {
                    best = Some((prefix.len(), v));
                }
            }
        }
    }
    best.map(|(_, v)| v)
}

fn split_query(pq: &str) -> (&str, Option<&str>) {
    match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    }
}

pub fn matches(m: &RouteMatch, req: &RequestMeta<'_>) -> bool {
    let (path, query) = split_query(req.path_and_query);
    let path_ok = match &m.path {
        PathMatch::Prefix(p) => starts_with(path, p, m.case_sensitive),
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                path == p
            } else {
                path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(r) => r.0.is_match(path),
        PathMatch::SeparatedPrefix(p) => {
            starts_with(path, p, m.case_sensitive)
                && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'))
        }
    };
    if !path_ok {
        return false;
    }
    if m.grpc {
        let grpc = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !grpc {
            return false;
        }
    }
    for h in &m.headers {
        let value = pseudo_or_header(req, &h.name);
        let ok = match (&h.kind, &value) {
            (HeaderMatchKind::Present, v) => v.is_some(),
            (HeaderMatchKind::Absent, v) => v.is_none(),
            (HeaderMatchKind::Value(_), None) => {
                // A missing header never matches, even inverted (Envoy).
                return false;
            }
            (HeaderMatchKind::Value(sm), Some(v)) => sm.matches(v),
        };
        if ok == h.invert {
            return false;
        }
    }
    for q in &m.query {
        let found = query.and_then(|qs| {
            qs.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == q.name).then_some(v)
            })
        });
        let ok = match (&q.value, found) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(sm), Some(v)) => sm.matches(v),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len()
            && path.is_char_boundary(prefix.len())
            && path[..prefix.len()].eq_ignore_ascii_case(prefix)
    }
}

/// Header value for matching; several values are joined with `,` as Envoy does.
fn pseudo_or_header(req: &RequestMeta<'_>, name: &str) -> Option<String> {
    match name {
        ":method" => Some(req.method.as_str().to_string()),
        ":authority" | "host" => Some(req.authority.to_string()),
        ":path" => Some(req.path_and_query.to_string()),
        ":scheme" => Some(req.scheme.to_string()),
        _ => {
            let vals: Vec<&str> = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!vals.is_empty()).then(|| vals.join(","))
        }
    }
}

fn rewrite_path(a: &ForwardAction, m: &RouteMatch, path: &str) -> Option<String> {
    if let Some(p) = &a.prefix_rewrite {
        let matched = match &m.path {
            PathMatch::Prefix(x) | PathMatch::SeparatedPrefix(x) => x.len(),
            PathMatch::Exact(_) | PathMatch::Regex(_) => path.len(),
        };
        let rest = path.get(matched..).unwrap_or("");
        return Some(format!("{p}{rest}"));
    }
    if let Some((re, sub)) = &a.regex_rewrite {
        return Some(re.0.replace_all(path, sub.as_str()).into_owned());
    }
    None
}

fn redirect_location(
    r: &Redirect,
    m: &RouteMatch,
    req: &RequestMeta<'_>,
    path: &str,
    query: Option<&str>,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let orig_host = strip_port(req.authority);
    let orig_port = req
        .authority
        .get(orig_host.len() + 1..)
        .filter(|p| !p.is_empty());
    let host = r.host.as_deref().unwrap_or(orig_host);
    let port = match (r.port, r.scheme.is_some()) {
        (Some(p), _) => Some(p.to_string()),
        // Changing scheme drops the original port (Envoy).
        (None, true) => None,
        (None, false) if r.host.is_none() => orig_port.map(str::to_string),
        (None, false) => None,
    };
    let port =
        port.filter(|p| !((scheme == "https" && p == "443") || (scheme == "http" && p == "80")));
    let new_path = if let Some(p) = &r.path {
        p.clone()
    } else if let Some(pre) = &r.prefix_rewrite {
        let matched = match &m.path {
            PathMatch::Prefix(x) | PathMatch::SeparatedPrefix(x) => x.len(),
            _ => path.len(),
        };
        format!("{pre}{}", path.get(matched..).unwrap_or(""))
    } else {
        path.to_string()
    };
    let keep_query = !r.strip_query && !new_path.contains('?');
    let mut out = format!("{scheme}://{host}");
    if let Some(p) = port {
        out.push(':');
        out.push_str(&p);
    }
    out.push_str(&new_path);
    if let (true, Some(q)) = (keep_query, query) {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
