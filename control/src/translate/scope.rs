//! Per-proxy scoping: which services a proxy reaches (namespace, `exportTo`,
//! the `Sidecar` resource) and which DestinationRule, VirtualService and
//! PeerAuthentication apply.

use std::collections::BTreeMap;

use isthmus_xds::{Proxy, ProxyRole};

use crate::config::host::{host_matches, resolve_fqdn, resolve_gateway_ref, GatewayRef};
use crate::config::{
    labels_match, DestinationRuleSpec, MtlsMode, Object, SidecarSpec, VirtualServiceSpec,
};
use crate::store::ConfigSnapshot;

use super::services::{Service, Visibility};

/// Where a proxy stands: its namespace, labels and the Sidecar that scopes it.
pub struct Scope<'a> {
    config: &'a ConfigSnapshot,
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
    root_namespace: &'a str,
    sidecar: Option<&'a Object<SidecarSpec>>,
}

impl<'a> Scope<'a> {
    pub fn new(config: &'a ConfigSnapshot, proxy: &'a Proxy, root_namespace: &'a str) -> Scope<'a> {
        let sidecar = if proxy.role == ProxyRole::Sidecar {
            select_sidecar(config, &proxy.namespace, &proxy.labels, root_namespace)
        } else {
            None
        };
        Scope {
            config,
            namespace: &proxy.namespace,
            labels: &proxy.labels,
            root_namespace,
            sidecar,
        }
    }

    pub fn sidecar(&self) -> Option<&'a Object<SidecarSpec>> {
        self.sidecar
    }

    /// The proxy may send to `service`: it is exported to the proxy's
    /// namespace and, when a Sidecar applies, listed in its egress hosts.
    pub fn reaches(&self, service: &Service) -> bool {
        if !service.visibility.allows(self.namespace) {
            return false;
        }
        let Some(sidecar) = self.sidecar else {
            return true;
        };
        if sidecar.spec.egress.is_empty() {
            return true;
        }
        sidecar.spec.egress.iter().flat_map(|e| &e.hosts).any(|h| {
            egress_host_matches(
                h,
                sidecar.namespace(),
                &service.namespace,
                &service.hostname,
            )
        })
    }

    /// The DestinationRule for `hostname` as Istio picks it: visible to the
    /// proxy, then the proxy's namespace, the service's, the root namespace;
    /// within one namespace an exact host beats a wildcard.
    pub fn destination_rule(
        &self,
        hostname: &str,
        service_namespace: &str,
    ) -> Option<&'a Object<DestinationRuleSpec>> {
        let labels = self.labels;
        self.config
            .destination_rules()
            .filter(|dr| {
                let ns = dr.namespace();
                let visible = ns == self.namespace
                    || Visibility::from_export_to(&dr.spec.export_to, ns).allows(self.namespace);
                let selected = match &dr.spec.workload_selector {
                    Some(sel) => ns == self.namespace && labels_match(&sel.match_labels, labels),
                    None => true,
                };
                visible && selected && host_matches(&resolve_fqdn(&dr.spec.host, ns), hostname)
            })
            .min_by_key(|dr| {
                let ns = dr.namespace();
                let ns_rank = if ns == self.namespace {
                    0
                } else if ns == service_namespace {
                    1
                } else if ns == self.root_namespace {
                    2
                } else {
                    3
                };
                let host = resolve_fqdn(&dr.spec.host, ns);
                let wildcard = host.starts_with('*');
                (ns_rank, wildcard, usize::MAX - host.len())
            })
    }

    /// VirtualServices bound to the mesh (sidecars) that the proxy sees.
    pub fn mesh_virtual_services(&self) -> Vec<&'a Object<VirtualServiceSpec>> {
        self.config
            .virtual_services()
            .filter(|vs| {
                let ns = vs.namespace();
                let mesh = vs.spec.gateways.is_empty()
                    || vs
                        .spec
                        .gateways
                        .iter()
                        .any(|g| resolve_gateway_ref(g, ns) == GatewayRef::Mesh);
                mesh && (ns == self.namespace
                    || Visibility::from_export_to(&vs.spec.export_to, ns).allows(self.namespace))
            })
            .collect()
    }

    /// The mesh VirtualService routing `hostname`: exact host beats wildcard,
    /// then the proxy's namespace first, then namespace/name order.
    pub fn virtual_service_for(&self, hostname: &str) -> Option<&'a Object<VirtualServiceSpec>> {
        self.mesh_virtual_services()
            .into_iter()
            .filter_map(|vs| {
                let best = vs
                    .spec
                    .hosts
                    .iter()
                    .map(|h| resolve_fqdn(h, vs.namespace()))
                    .filter(|h| host_matches(h, hostname))
                    .map(|h| h.starts_with('*'))
                    .min()?;
                Some((best, vs.namespace() != self.namespace, vs))
            })
            .min_by_key(|(wild, other_ns, vs)| {
                (
                    *wild,
                    *other_ns,
                    (vs.namespace().to_string(), vs.name().to_string()),
                )
            })
            .map(|(_, _, vs)| vs)
    }
}

/// `ns/host` from a Sidecar egress listener: `*` any namespace, `.` the
/// Sidecar's, `~` none; the host part may be `*` or a wildcard suffix.
fn egress_host_matches(entry: &str, sidecar_ns: &str, service_ns: &str, hostname: &str) -> bool {
    let (ns, host) = entry.split_once('/').unwrap_or(("*", entry));
    let ns_ok = match ns {
        "*" => true,
        "." => service_ns == sidecar_ns,
        "~" => false,
        other => other == service_ns,
    };
    ns_ok && (host == "*" || host_matches(&resolve_fqdn(host, service_ns), hostname))
}

/// The Sidecar of a workload: one selecting its labels in its namespace,
/// else its namespace's default, else the root namespace's default.
pub fn select_sidecar<'a>(
    config: &'a ConfigSnapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<&'a Object<SidecarSpec>> {
    let in_ns = || {
        config
            .sidecars()
            .filter(move |s| s.namespace() == namespace)
    };
    in_ns()
        .find(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|sel| !sel.labels.is_empty() && labels_match(&sel.labels, labels))
        })
        .or_else(|| in_ns().find(|s| s.spec.workload_selector.is_none()))
        .or_else(|| {
            config
                .sidecars()
                .find(|s| s.namespace() == root_namespace && s.spec.workload_selector.is_none())
        })
}

/// Istio's tie-break when several policies apply at one level: the oldest
/// (`creationTimestamp`, RFC 3339 so text order is time order), then by
/// name. Policies without a timestamp (file mode) go by name.
fn oldest<'a, S: Default + PartialEq>(
    it: impl Iterator<Item = &'a Object<S>>,
) -> Option<&'a Object<S>> {
    it.min_by(|a, b| {
        let key = |o: &'a Object<S>| {
            let ts = o.metadata.creation_timestamp.as_deref();
            (ts.is_none(), ts.unwrap_or_default(), o.name())
        };
        key(a).cmp(&key(b))
    })
}

/// The effective mTLS mode on a workload port (Istio's precedence: workload
/// policy with port-level override, namespace policy, mesh policy; UNSET
/// inherits; the mesh default is PERMISSIVE). `port` is the workload's
/// (target) port, which is what `portLevelMtls` is keyed by.
pub fn mtls_mode(
    config: &ConfigSnapshot,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> MtlsMode {
    let mut chain = Vec::new();
    let policies: Vec<_> = config.peer_authentications().collect();
    if let Some(pa) = oldest(policies.iter().copied().filter(|pa| {
        pa.namespace() == namespace
            && pa.spec.selector.as_ref().is_some_and(|s| {
                !s.match_labels.is_empty() && labels_match(&s.match_labels, labels)
            })
    })) {
        if let Some(m) = pa
            .spec
            .port_level_mtls
            .get(&u32::from(port))
            .and_then(|m| m.mode)
        {
            chain.push(m);
        }
        chain.extend(pa.spec.mtls.as_ref().and_then(|m| m.mode));
    }
    // `portLevelMtls` needs a selector (validation rejects it otherwise),
    // so namespace-wide policies contribute only their `mtls`.
    let namespace_wide = |ns: &str| {
        oldest(policies.iter().copied().filter(|pa| {
            pa.namespace() == ns
                && pa
                    .spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.is_empty())
        }))
        .and_then(|pa| pa.spec.mtls.as_ref().and_then(|m| m.mode))
    };
    chain.extend(namespace_wide(namespace));
    chain.extend(namespace_wide(root_namespace));
    chain
        .into_iter()
        .find(|m| *m != MtlsMode::Unset)
        .unwrap_or(MtlsMode::Permissive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> ConfigSnapshot {
        ConfigSnapshot::from_text(std::path::Path::new("test.yaml"), yaml)
            .unwrap_or_else(|errors| panic!("{errors:?}"))
    }

    fn pa(ns: &str, name: &str, extra: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\n{extra}---\n"
        )
    }

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    #[test]
    fn peer_authentication_precedence() {
        use MtlsMode::*;
        let mode = |yaml: &str, ns: &str, app: &str, port: u16| {
            mtls_mode(&snapshot(yaml), "istio-system", ns, &labels(app), port)
        };
        assert_eq!(mode("", "foo", "httpbin", 8000), Permissive, "mesh default");
        let mesh = pa(
            "istio-system",
            "default",
            "spec:\n  mtls:\n    mode: STRICT\n",
        );
        assert_eq!(mode(&mesh, "foo", "httpbin", 8000), Strict);
        let ns = pa("foo", "default", "spec:\n  mtls:\n    mode: PERMISSIVE\n");
        let both = format!("{mesh}{ns}");
        assert_eq!(mode(&both, "foo", "httpbin", 8000), Permissive);
        assert_eq!(
            mode(&both, "bar", "httpbin", 8000),
            Strict,
            "other namespace"
        );
        let workload = pa(
            "foo",
            "httpbin",
            "spec:\n  selector:\n    matchLabels:\n      app: httpbin\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n    9090:\n      mode: UNSET\n",
        );
        let all = format!("{both}{workload}");
        assert_eq!(mode(&all, "foo", "httpbin", 8000), Strict);
        assert_eq!(mode(&all, "foo", "httpbin", 8080), Disable, "port level");
        assert_eq!(
            mode(&all, "foo", "httpbin", 9090),
            Strict,
            "UNSET port inherits"
        );
        assert_eq!(
            mode(&all, "foo", "ratings", 8080),
            Permissive,
            "not selected"
        );
        // A workload policy whose own mode is UNSET inherits the namespace's.
        let unset = pa(
            "foo",
            "httpbin",
            "spec:\n  selector:\n    matchLabels:\n      app: httpbin\n  mtls:\n    mode: UNSET\n",
        );
        assert_eq!(
            mode(&format!("{both}{unset}"), "foo", "httpbin", 8000),
            Permissive
        );
        // A selector in the root namespace does not reach other namespaces.
        let root_selector = pa(
            "istio-system",
            "strict-httpbin",
            "spec:\n  selector:\n    matchLabels:\n      app: httpbin\n  mtls:\n    mode: STRICT\n",
        );
        assert_eq!(mode(&root_selector, "foo", "httpbin", 8000), Permissive);
    }

    #[test]
    fn oldest_workload_policy_wins() {
        let policy = |name: &str, ts: &str, m: &str| {
            format!(
                "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: foo\n  creationTimestamp: \"{ts}\"\nspec:\n  selector:\n    matchLabels:\n      app: httpbin\n  mtls:\n    mode: {m}\n---\n"
            )
        };
        let yaml = format!(
            "{}{}",
            policy("a-newer", "2024-05-01T00:00:00Z", "DISABLE"),
            policy("b-older", "2023-01-01T00:00:00Z", "STRICT")
        );
        let m = mtls_mode(
            &snapshot(&yaml),
            "istio-system",
            "foo",
            &labels("httpbin"),
            8000,
        );
        assert_eq!(m, MtlsMode::Strict);
    }

    #[test]
    fn egress_hosts() {
        let h = "reviews.shop.svc.cluster.local";
        assert!(egress_host_matches("*/*", "app", "shop", h));
        assert!(egress_host_matches("shop/*", "app", "shop", h));
        assert!(!egress_host_matches("./*", "app", "shop", h));
        assert!(egress_host_matches("./*", "shop", "shop", h));
        assert!(egress_host_matches(
            "shop/reviews.shop.svc.cluster.local",
            "app",
            "shop",
            h
        ));
        assert!(!egress_host_matches(
            "shop/ratings.shop.svc.cluster.local",
            "app",
            "shop",
            h
        ));
        assert!(!egress_host_matches("~/*", "app", "shop", h));
        assert!(egress_host_matches(
            "*/*.example.com",
            "app",
            "ext",
            "api.example.com"
        ));
    }
}
