//! Who is on each side of a call, in the terms of Istio's standard labels
//! (`*_workload`, `*_workload_namespace`, `*_app`, `*_version`, `*_cluster`,
//! `*_canonical_service`, `*_canonical_revision`, `*_principal`).
//!
//! The proxy's own side comes from its xDS node metadata (the bootstrap);
//! the peer's from Istio's peer metadata exchange headers (HTTP) or from
//! the peer's certificate (TCP). Every value read from a peer goes through
//! a bounded interner, so a misbehaving peer cannot grow the label space.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

/// One side of a call. Empty fields are exported as `unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    /// SPIFFE URI when it is known from a verified certificate (or derived
    /// from the service account of a peer reached over verified mTLS).
    pub principal: String,
    /// Not a label: used to derive a principal from peer metadata.
    pub service_account: String,
}

/// Value of a label: `unknown` when empty, as Istio exports it.
pub fn label(v: &str) -> &str {
    if v.is_empty() {
        "unknown"
    } else {
        v
    }
}

impl Workload {
    /// From node metadata with Istio's keys (`NAMESPACE`, `CLUSTER_ID`,
    /// `LABELS`, `WORKLOAD_NAME`, `NAME`, `SERVICE_ACCOUNT`) and, as the last
    /// resort for the name, the POD part of an Istio node id
    /// (`TYPE~IP~POD.NS~NS.svc.cluster.local`).
    pub fn from_metadata(meta: &Map<String, Value>, node_id: Option<&str>) -> Workload {
        let s = |k: &str| {
            meta.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let labels = meta.get("LABELS").and_then(Value::as_object);
        let l = |keys: &[&str]| -> String {
            keys.iter()
                .find_map(|k| labels.and_then(|m| m.get(*k)).and_then(Value::as_str))
                .unwrap_or("")
                .to_string()
        };
        let namespace = s("NAMESPACE");
        let pod = {
            let name = s("NAME");
            if name.is_empty() {
                node_id.map(|id| pod_of(id, &namespace)).unwrap_or_default()
            } else {
                name
            }
        };
        let name = {
            let w = s("WORKLOAD_NAME");
            if w.is_empty() {
                pod
            } else {
                w
            }
        };
        let app = l(&["app", "app.kubernetes.io/name"]);
        let version = l(&["version", "app.kubernetes.io/version"]);
        let canonical_service = {
            let c = l(&["service.istio.io/canonical-name"]);
            match (c.is_empty(), app.is_empty()) {
                (false, _) => c,
                (true, false) => app.clone(),
                (true, true) => name.clone(),
            }
        };
        let canonical_revision = {
            let c = l(&["service.istio.io/canonical-revision"]);
            match (c.is_empty(), version.is_empty()) {
                (false, _) => c,
                (true, false) => version.clone(),
                (true, true) => "latest".to_string(),
            }
        };
        Workload {
            name,
            namespace,
            app,
            version,
            cluster: s("CLUSTER_ID"),
            canonical_service,
            canonical_revision,
            principal: String::new(),
            service_account: s("SERVICE_ACCOUNT"),
        }
    }

    /// What a verified SPIFFE certificate says about its holder: principal,
    /// namespace, and the cluster whose intermediate issued it (Isthmus
    /// intermediates are named `Isthmus intermediate CA <cluster>`).
    pub fn from_certificate(leaf_der: &[u8], spiffe: &str) -> Workload {
        let mut w = Workload {
            principal: spiffe.to_string(),
            ..Workload::default()
        };
        if let Some((ns, sa)) = spiffe_ns_sa(spiffe) {
            w.namespace = ns.to_string();
            w.service_account = sa.to_string();
        }
        w.cluster = issuing_cluster(leaf_der).unwrap_or_default();
        w
    }

    /// Fills what `other` knows and `self` does not.
    pub fn merge(&mut self, other: &Workload) {
        let pairs = [
            (&mut self.name, &other.name),
            (&mut self.namespace, &other.namespace),
            (&mut self.app, &other.app),
            (&mut self.version, &other.version),
            (&mut self.cluster, &other.cluster),
            (&mut self.canonical_service, &other.canonical_service),
            (&mut self.canonical_revision, &other.canonical_revision),
            (&mut self.principal, &other.principal),
            (&mut self.service_account, &other.service_account),
        ];
        for (mine, theirs) in pairs {
            if mine.is_empty() {
                mine.clone_from(theirs);
            }
        }
    }
}

/// `TYPE~IP~POD.NS~NS.svc.cluster.local` → `POD`.
fn pod_of(node_id: &str, namespace: &str) -> String {
    let Some(pod_ns) = node_id.split('~').nth(2) else {
        return String::new();
    };
    match pod_ns.strip_suffix(&format!(".{namespace}")) {
        Some(pod) if !namespace.is_empty() => pod.to_string(),
        _ => pod_ns
            .rsplit_once('.')
            .map_or(pod_ns, |(p, _)| p)
            .to_string(),
    }
}

/// `spiffe://TD/ns/NS/sa/SA` → `(NS, SA)`.
pub fn spiffe_ns_sa(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (_, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa)) => Some((ns, sa)),
        _ => None,
    }
}

/// `spiffe://TD/...` → `TD`.
pub fn spiffe_trust_domain(uri: &str) -> Option<&str> {
    uri.strip_prefix("spiffe://")?.split('/').next()
}

const INTERMEDIATE_PREFIX: &str = "Isthmus intermediate CA ";

fn issuing_cluster(leaf_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der).ok()?;
    let cn = cert.issuer().iter_common_name().next()?.as_str().ok()?;
    cn.strip_prefix(INTERMEDIATE_PREFIX).map(str::to_string)
}

/// Distinct peer descriptions kept at most; past it, new peers are
/// reported as `unknown` (and a warning is logged once).
pub const MAX_PEERS: usize = 1024;

/// Deduplicates peer descriptions and bounds how many exist.
///
/// A plain mutex: held only for one hash lookup, never across an await, and
/// shared by every connection of the proxy (there is no owner task that
/// could answer faster than the lock).
#[derive(Debug, Default)]
pub struct PeerInterner {
    seen: Mutex<HashSet<Arc<Workload>>>,
}

impl PeerInterner {
    /// The shared copy of `w`, or `None` when the bound is reached.
    pub fn intern(&self, w: Workload) -> Option<Arc<Workload>> {
        let Ok(mut seen) = self.seen.lock() else {
            // Poisoned: a panic elsewhere; degrade to unknown peers.
            return None;
        };
        if let Some(existing) = seen.get(&w) {
            return Some(existing.clone());
        }
        if seen.len() >= MAX_PEERS {
            if seen.len() == MAX_PEERS {
                tracing::warn!(
                    limit = MAX_PEERS,
                    "too many distinct peer workloads; further ones are reported as unknown in Istio metrics"
                );
                // One sentinel entry so the warning is not repeated.
                seen.insert(Arc::new(Workload {
                    name: "\u{0}overflow".into(),
                    ..Workload::default()
                }));
            }
            return None;
        }
        let w = Arc::new(w);
        seen.insert(w.clone());
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_metadata_gives_istio_labels() {
        let meta = json!({
            "NAMESPACE": "default",
            "CLUSTER_ID": "us-east",
            "SERVICE_ACCOUNT": "bookinfo-reviews",
            "LABELS": {"app": "reviews", "version": "v2"},
        });
        let w = Workload::from_metadata(
            meta.as_object().expect("object"),
            Some("sidecar~127.0.0.1~reviews-v2.default~default.svc.cluster.local"),
        );
        assert_eq!(w.name, "reviews-v2");
        assert_eq!(w.namespace, "default");
        assert_eq!(w.app, "reviews");
        assert_eq!(w.version, "v2");
        assert_eq!(w.cluster, "us-east");
        assert_eq!(w.canonical_service, "reviews");
        assert_eq!(w.canonical_revision, "v2");
    }

    #[test]
    fn workload_name_and_canonical_labels_win() {
        let meta = json!({
            "NAMESPACE": "shop",
            "WORKLOAD_NAME": "cart",
            "LABELS": {"service.istio.io/canonical-name": "cart-svc"},
        });
        let w = Workload::from_metadata(meta.as_object().expect("object"), None);
        assert_eq!(w.name, "cart");
        assert_eq!(w.canonical_service, "cart-svc");
        assert_eq!(w.canonical_revision, "latest");
        assert_eq!(label(&w.app), "unknown");
    }

    #[test]
    fn spiffe_parts() {
        let id = "spiffe://td.local/ns/default/sa/pp";
        assert_eq!(spiffe_ns_sa(id), Some(("default", "pp")));
        assert_eq!(spiffe_trust_domain(id), Some("td.local"));
        assert_eq!(spiffe_ns_sa("spiffe://td/x"), None);
    }

    #[test]
    fn interner_is_bounded() {
        let i = PeerInterner::default();
        for n in 0..MAX_PEERS {
            let w = Workload {
                name: format!("w{n}"),
                ..Workload::default()
            };
            assert!(i.intern(w).is_some());
        }
        let again = i.intern(Workload {
            name: "w1".into(),
            ..Workload::default()
        });
        assert!(again.is_some(), "known peers stay known");
        let new = i.intern(Workload {
            name: "new".into(),
            ..Workload::default()
        });
        assert!(new.is_none(), "the bound holds");
    }
}
