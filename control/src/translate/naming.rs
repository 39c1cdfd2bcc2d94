//! Istio's names for generated resources (docs/architecture.md, Naming).

use crate::config::host::{CLUSTERSET_DOMAIN, CLUSTER_DOMAIN};

/// `outbound|PORT|SUBSET|HOST`; an empty subset gives `outbound|9080||HOST`.
pub fn outbound_cluster(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The SNI a client sends for ISTIO_MUTUAL, which east-west gateways route
/// on: `outbound_.PORT_.SUBSET_.HOST` (no subset leaves `_._.` between
/// the port and the host).
pub fn outbound_sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The parts of an `outbound|PORT|SUBSET|HOST` name.
pub fn parse_outbound_cluster(name: &str) -> Option<(u16, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    if host.is_empty() {
        return None;
    }
    Some((port, subset, host))
}

/// The parts of an `outbound_.PORT_.SUBSET_.HOST` SNI name.
pub fn parse_outbound_sni(name: &str) -> Option<(u16, &str, &str)> {
    let rest = name.strip_prefix("outbound_.")?;
    let (port, rest) = rest.split_once("_.")?;
    let (subset, host) = rest.split_once("_.")?;
    if host.is_empty() {
        return None;
    }
    Some((port.parse().ok()?, subset, host))
}

/// `inbound|PORT||`: the local application behind a sidecar.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}||")
}

/// A non-capturing sidecar's outbound listener.
pub fn outbound_listener(bind: &str, port: u16) -> String {
    format!("outbound_{bind}_{port}")
}

/// A non-capturing sidecar's inbound listener on the workload address.
pub fn inbound_listener(bind: &str, port: u16) -> String {
    format!("inbound_{bind}_{port}")
}

/// Gateway listeners are named for the address and port they bind.
pub fn gateway_listener(bind: &str, port: u16) -> String {
    format!("{bind}_{port}")
}

/// The route configuration of outbound HTTP listeners on `port`.
pub fn outbound_route(port: u16) -> String {
    port.to_string()
}

/// The SPIFFE identity of a service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Every name a client may use for `host` on `port`, as Istio's virtual
/// hosts list them: for `name.ns.svc.cluster.local`, the short name (only
/// from the same namespace, where it resolves), `name.ns`, `name.ns.svc`,
/// the FQDN and the `clusterset.local` twin, each with and without `:port`.
pub fn host_aliases(host: &str, port: u16, caller_namespace: &str) -> Vec<String> {
    let mut names = Vec::new();
    let suffix = format!(".svc.{CLUSTER_DOMAIN}");
    match host.strip_suffix(&suffix).and_then(|s| s.split_once('.')) {
        Some((name, ns)) if !ns.contains('.') => {
            if ns == caller_namespace {
                names.push(name.to_string());
            }
            names.push(format!("{name}.{ns}"));
            names.push(format!("{name}.{ns}.svc"));
            names.push(host.to_string());
            names.push(format!("{name}.{ns}.svc.{CLUSTERSET_DOMAIN}"));
        }
        _ => names.push(host.to_string()),
    }
    let with_port: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    names.extend(with_port);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_istio() {
        let host = "reviews.default.svc.cluster.local";
        assert_eq!(
            outbound_cluster(9080, "", host),
            "outbound|9080||reviews.default.svc.cluster.local"
        );
        assert_eq!(
            outbound_cluster(9080, "v1", host),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(
            outbound_sni(9080, "", host),
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
        assert_eq!(
            outbound_sni(9080, "v1", host),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        assert_eq!(inbound_cluster(8080), "inbound|8080||");
        assert_eq!(spiffe_id("td", "ns", "sa"), "spiffe://td/ns/ns/sa/sa");
    }

    #[test]
    fn names_parse_back() {
        let host = "reviews.default.svc.cluster.local";
        for subset in ["", "v1"] {
            assert_eq!(
                parse_outbound_cluster(&outbound_cluster(9080, subset, host)),
                Some((9080, subset, host))
            );
            assert_eq!(
                parse_outbound_sni(&outbound_sni(9080, subset, host)),
                Some((9080, subset, host))
            );
        }
        assert_eq!(parse_outbound_cluster("inbound|80||"), None);
        assert_eq!(parse_outbound_cluster("outbound|x||h"), None);
        assert_eq!(parse_outbound_sni("outbound_.80_._."), None);
    }

    #[test]
    fn aliases_cover_every_spelling() {
        let a = host_aliases("reviews.default.svc.cluster.local", 9080, "default");
        for want in [
            "reviews",
            "reviews:9080",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local:9080",
            "reviews.default.svc.clusterset.local",
            "reviews.default.svc.clusterset.local:9080",
        ] {
            assert!(a.iter().any(|n| n == want), "missing {want} in {a:?}");
        }
        let other = host_aliases("reviews.default.svc.cluster.local", 9080, "shop");
        assert!(
            !other.iter().any(|n| n == "reviews"),
            "short name leaks across namespaces"
        );
        assert_eq!(
            host_aliases("api.example.com", 443, "x"),
            vec!["api.example.com", "api.example.com:443"]
        );
    }
}
