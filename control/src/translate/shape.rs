//! Which proxies share translation output: the shape keys behind the xDS
//! server's per-push cache.
//!
//! The replicas of a workload differ only in IP and pod name, and translation
//! reads neither for most of what it produces. A sidecar's IP matters only
//! through the inbound side: which service ports it serves (a WorkloadEntry
//! may list its address), the inbound listeners that bind it, and a Sidecar
//! `defaultEndpoint` of `0.0.0.0`. So the key of each type holds exactly what
//! that type reads:
//! - EDS and SDS: the proxy without its addresses;
//! - CDS and RDS: that, the outbound bind and application addresses, and the
//!   inbound ports the current input gives the proxy (not the IP itself);
//! - LDS: the same when the proxy serves no port; with inbound listeners,
//!   which bind the workload IP, the full key including the IP;
//! - gateways, and sidecars under a Sidecar resource with `ingress`
//!   listeners: the full key, IP included (rare and few).
//!
//! The keys depend on the input, so the server asks again on every push.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use isthmus_xds::{Proxy, ProxyRole, TypeUrl};

use super::listener::sidecar::inbound_ports;
use super::{Context, Inputs, ProxyFlavor};

/// The shape key of every type for `proxy`, indexed like [`TypeUrl::ALL`].
pub fn shapes(inputs: &Inputs, proxy: &Proxy, flavor: ProxyFlavor) -> [u64; TypeUrl::ALL.len()] {
    let base = proxy.shape_key_except_address();
    let binds = hash_of(&(base, proxy.outbound_bind, proxy.app_address));
    let (clusters_routes, listeners) = match flavor {
        // Proxyless gRPC gets no inbound side and binds nothing.
        ProxyFlavor::Grpc => (base, base),
        ProxyFlavor::Envoy => address_shapes(inputs, proxy, binds),
    };
    TypeUrl::ALL.map(|t| match t {
        TypeUrl::Cluster | TypeUrl::RouteConfiguration => clusters_routes,
        TypeUrl::Listener => listeners,
        TypeUrl::ClusterLoadAssignment | TypeUrl::Secret => base,
        // The table answers with the outbound bind address.
        TypeUrl::NameTable => binds,
    })
}

/// (CDS and RDS key, LDS key) of an Envoy-flavoured proxy.
fn address_shapes(inputs: &Inputs, proxy: &Proxy, binds: u64) -> (u64, u64) {
    let full = proxy.shape_key();
    if proxy.role != ProxyRole::Sidecar {
        return (full, full);
    }
    let ctx = Context::new(inputs, proxy, ProxyFlavor::Envoy);
    if ctx
        .scope
        .sidecar()
        .is_some_and(|s| !s.spec.ingress.is_empty())
    {
        return (full, full);
    }
    let inbound = inbound_ports(&ctx);
    if inbound.is_empty() {
        let key = hash_of(&(binds, "no inbound ports"));
        return (key, key);
    }
    let mut h = DefaultHasher::new();
    binds.hash(&mut h);
    // An outbound listener on the workload IP (or the wildcard) gives way to
    // the inbound ones on the same port, which changes routes too.
    (proxy.outbound_bind == proxy.ip || proxy.outbound_bind.is_unspecified()).hash(&mut h);
    for p in &inbound {
        (&p.name, p.port, p.target_port, format!("{:?}", p.protocol)).hash(&mut h);
    }
    (h.finish(), full)
}

fn hash_of(value: &impl Hash) -> u64 {
    // DefaultHasher::new() has fixed keys: stable within the process, which
    // is all the cache needs.
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_text;
    use crate::store::ConfigSnapshot;
    use crate::translate::generator::generate;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    use isthmus_federation::RegistrySnapshot;
    use isthmus_xds::Names;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    fn inputs(yaml: &str) -> Inputs {
        let resources: BTreeMap<_, _> =
            crate::store::stored_resources(parse_text(Path::new("mem.yaml"), yaml));
        Inputs::new(
            Arc::new(ConfigSnapshot::new(1, resources, Vec::new())),
            Arc::new(RegistrySnapshot::default()),
            super::super::LocalSettings::default(),
        )
    }

    fn sidecar(ip: &str, pod: &str, app: Option<&str>) -> Proxy {
        let mut meta = Struct::default();
        meta.fields.insert(
            "INTERCEPTION_MODE".into(),
            Value {
                kind: Some(Kind::StringValue("NONE".into())),
            },
        );
        if let Some(app) = app {
            let mut labels = Struct::default();
            labels.fields.insert(
                "app".into(),
                Value {
                    kind: Some(Kind::StringValue(app.into())),
                },
            );
            meta.fields.insert(
                "LABELS".into(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            );
        }
        let node = Node {
            id: format!("sidecar~{ip}~{pod}.shop~shop.svc.cluster.local"),
            metadata: Some(meta),
            ..Default::default()
        };
        Proxy::from_node(Some(&node)).expect("valid node")
    }

    const SERVICES: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: a\n  namespace: shop\nspec:\n  hosts: [a.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  workloadSelector:\n    labels: {app: a}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: a-1\n  namespace: shop\nspec:\n  address: 10.0.0.7\n  labels: {app: a}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: b\n  namespace: shop\nspec:\n  hosts: [b.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {number: 81, name: tcp, protocol: TCP}\n  workloadSelector:\n    labels: {app: b}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: b-9\n  namespace: shop\nspec:\n  address: 10.0.0.9\n  labels: {app: b}\n";

    fn output(inputs: &Inputs, proxy: &Proxy, t: TypeUrl) -> Vec<(String, String)> {
        generate(inputs, proxy, ProxyFlavor::Envoy, t, &Names::All)
            .into_iter()
            .map(|r| (r.name, r.version))
            .collect()
    }

    /// The cache's contract, checked against translation itself: equal keys
    /// give equal output, for replicas that differ in IP and pod.
    #[test]
    fn equal_keys_mean_equal_output() {
        let inputs = inputs(SERVICES);
        let proxies = [
            sidecar("10.1.0.1", "c-1", None),
            sidecar("10.1.0.2", "c-2", None),
            sidecar("10.0.0.5", "a-5", Some("a")),
            sidecar("10.0.0.6", "a-6", Some("a")),
            // Listed by address as an endpoint of b: serves port 81.
            sidecar("10.0.0.9", "b-9", None),
        ];
        let keys: Vec<_> = proxies
            .iter()
            .map(|p| shapes(&inputs, p, ProxyFlavor::Envoy))
            .collect();
        for t in TypeUrl::ALL {
            for (i, a) in proxies.iter().enumerate() {
                for (j, b) in proxies.iter().enumerate().skip(i + 1) {
                    if keys[i][t.index()] == keys[j][t.index()] {
                        assert_eq!(
                            output(&inputs, a, t),
                            output(&inputs, b, t),
                            "{t}: {} and {} share a key but not their output",
                            a.node_id,
                            b.node_id
                        );
                    }
                }
            }
        }
        let cds = TypeUrl::Cluster.index();
        let lds = TypeUrl::Listener.index();
        // Clients that serve nothing share everything, IPs notwithstanding.
        assert_eq!(keys[0], keys[1]);
        // Replicas of a: CDS and RDS shared, LDS (inbound binds the IP) not.
        assert_eq!(keys[2][cds], keys[3][cds]);
        assert_ne!(keys[2][lds], keys[3][lds]);
        // Serving a port is part of the key.
        assert_ne!(keys[0][cds], keys[2][cds]);
        assert_ne!(keys[0][cds], keys[4][cds]);
        assert_ne!(keys[2][cds], keys[4][cds]);
    }
}
