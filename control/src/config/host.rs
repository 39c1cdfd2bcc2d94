//! Host name rules as Istio applies them: short names are relative to the
//! namespace of the resource that wrote them.

/// The DNS suffix of local services.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The MCS suffix naming a service across the whole cluster set.
pub const CLUSTERSET_DOMAIN: &str = "clusterset.local";

/// Resolves a host as written in a resource of `namespace` to a fully
/// qualified name: `reviews` in `default` becomes
/// `reviews.default.svc.cluster.local`. Names containing a dot and wildcards
/// are taken as written, as Istio does (so `reviews.default` is *not*
/// expanded). A `clusterset.local` name maps to its `cluster.local` twin,
/// because namespace sameness makes them one service.
pub fn resolve_fqdn(host: &str, namespace: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    if host == "*" || host.starts_with("*.") {
        return host.to_string();
    }
    if !host.contains('.') {
        return format!("{host}.{namespace}.svc.{CLUSTER_DOMAIN}");
    }
    if let Some(base) = host.strip_suffix(CLUSTERSET_DOMAIN) {
        if base.ends_with(".svc.") {
            return format!("{base}{CLUSTER_DOMAIN}");
        }
    }
    host.to_string()
}

/// The `name.namespace.svc.cluster.local` host of a service.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// Does host pattern `pattern` (possibly `*` or `*.suffix`) cover `host`?
/// Both are expected to be resolved FQDNs.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        // `*.example.com` covers `a.example.com`, and also a narrower
        // wildcard host such as `*.b.example.com`.
        let suffix = suffix.to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        let tail = host.strip_prefix('*').unwrap_or(&host);
        return tail == suffix || (tail.len() > suffix.len() && tail.ends_with(&suffix));
    }
    pattern.eq_ignore_ascii_case(host)
}

/// A VirtualService `gateways` entry: `mesh`, `name` (the VirtualService's
/// namespace) or `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayRef {
    Mesh,
    Gateway { namespace: String, name: String },
}

pub fn resolve_gateway_ref(reference: &str, namespace: &str) -> GatewayRef {
    if reference == "mesh" {
        return GatewayRef::Mesh;
    }
    match reference.split_once('/') {
        Some((ns, name)) => GatewayRef::Gateway {
            namespace: ns.to_string(),
            name: name.to_string(),
        },
        None => GatewayRef::Gateway {
            namespace: namespace.to_string(),
            // `name.namespace` was the pre-1.x form of a reference.
            name: reference.split('.').next().unwrap_or(reference).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_namespace_relative() {
        assert_eq!(
            resolve_fqdn("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_fqdn("reviews", "shop"),
            "reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            resolve_fqdn("reviews.default.svc.cluster.local", "shop"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_fqdn("reviews.default.svc.clusterset.local", "x"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(resolve_fqdn("reviews.default", "x"), "reviews.default");
        assert_eq!(resolve_fqdn("*.example.com", "x"), "*.example.com");
        assert_eq!(resolve_fqdn("api.example.com", "x"), "api.example.com");
    }

    #[test]
    fn wildcard_matching() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "api.example.org"));
        assert!(host_matches("API.example.com", "api.example.com"));
    }

    #[test]
    fn gateway_references() {
        assert_eq!(resolve_gateway_ref("mesh", "default"), GatewayRef::Mesh);
        assert_eq!(
            resolve_gateway_ref("istio-system/ingress", "default"),
            GatewayRef::Gateway {
                namespace: "istio-system".into(),
                name: "ingress".into()
            }
        );
        assert_eq!(
            resolve_gateway_ref("ingress", "shop"),
            GatewayRef::Gateway {
                namespace: "shop".into(),
                name: "ingress".into()
            }
        );
    }
}
