//! The xDS server's [`Generator`]: reads the newest [`Inputs`] and
//! translates for one proxy.

use std::sync::Arc;

use prost::{Message, Name};
use tokio::sync::watch;

use isthmus_xds::{GenerateError, Generator, Names, Proxy, Resource, TypeUrl};

use super::{cluster, endpoint, listener, proto::any, secret, Context, Inputs, ProxyFlavor};

/// Translation behind the xDS server. The owner of the inputs sends a new
/// [`Inputs`] on the channel, then calls the server's `Pusher::push`.
pub struct TranslateGenerator {
    inputs: watch::Receiver<Arc<Inputs>>,
}

impl TranslateGenerator {
    pub fn new(inputs: watch::Receiver<Arc<Inputs>>) -> TranslateGenerator {
        TranslateGenerator { inputs }
    }
}

/// Proxyless gRPC clients say so with Istio's node metadata `GENERATOR: grpc`.
pub fn flavor_of(proxy: &Proxy) -> ProxyFlavor {
    if proxy.generator.as_deref() == Some("grpc") {
        ProxyFlavor::Grpc
    } else {
        ProxyFlavor::Envoy
    }
}

impl Generator for TranslateGenerator {
    fn generate(
        &self,
        proxy: &Proxy,
        type_url: TypeUrl,
        names: &Names,
    ) -> Result<Vec<Resource>, GenerateError> {
        let inputs = self.inputs.borrow().clone();
        Ok(generate(&inputs, proxy, flavor_of(proxy), type_url, names))
    }

    fn shape_for(&self, proxy: &Proxy, type_url: TypeUrl) -> u64 {
        self.shapes(proxy)[type_url.index()]
    }

    fn shapes(&self, proxy: &Proxy) -> [u64; TypeUrl::ALL.len()] {
        let inputs = self.inputs.borrow().clone();
        super::shape::shapes(&inputs, proxy, flavor_of(proxy))
    }
}

fn named<T: Message + Name>(
    names: &Names,
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
) -> Vec<Resource> {
    items
        .into_iter()
        .filter(|i| names.contains(name(i)))
        .map(|i| Resource::new(name(&i).to_string(), any(i)))
        .collect()
}

/// Translation of one resource type for one proxy, as a pure function.
pub fn generate(
    inputs: &Inputs,
    proxy: &Proxy,
    flavor: ProxyFlavor,
    type_url: TypeUrl,
    names: &Names,
) -> Vec<Resource> {
    let ctx = Context::new(inputs, proxy, flavor);
    match type_url {
        TypeUrl::Cluster => named(names, cluster::clusters(&ctx), |c| &c.name),
        // Encoded one by one as they are built (see `load_assignments_as`);
        // every one is named in `names` already.
        TypeUrl::ClusterLoadAssignment => endpoint::load_assignments_as(&ctx, names, |c| {
            Resource::new(c.cluster_name.clone(), any(c))
        }),
        TypeUrl::Listener => named(names, listener::listeners(&ctx, names), |l| &l.name),
        TypeUrl::RouteConfiguration => {
            named(names, listener::route_configs(&ctx, names), |r| &r.name)
        }
        TypeUrl::Secret => named(names, secret::for_proxy(&ctx, names), |s| &s.name),
        TypeUrl::NameTable => {
            let table = super::nametable::for_proxy(&ctx);
            let name = isthmus_gateway::dnsproxy::NAME_TABLE_RESOURCE;
            if names.contains(name) {
                vec![Resource::new(name.to_string(), any(table))]
            } else {
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_text;
    use crate::store::ConfigSnapshot;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use isthmus_federation::RegistrySnapshot;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn inputs(yaml: &str) -> Arc<Inputs> {
        let resources: BTreeMap<_, _> =
            crate::store::stored_resources(parse_text(Path::new("mem.yaml"), yaml));
        let config = ConfigSnapshot::new(1, resources, Vec::new());
        Arc::new(Inputs::new(
            Arc::new(config),
            Arc::new(RegistrySnapshot::default()),
            super::super::LocalSettings::default(),
        ))
    }

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: NAME\n  namespace: shop\nspec:\n  hosts: [NAME.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n";

    #[test]
    fn follows_the_newest_inputs() {
        let (tx, rx) = watch::channel(inputs(&SE.replace("NAME", "a")));
        let generator = TranslateGenerator::new(rx);
        let node = Node {
            id: "sidecar~10.0.0.9~p.shop~shop.svc.cluster.local".into(),
            ..Default::default()
        };
        let proxy = Proxy::from_node(Some(&node)).expect("valid node");
        let names = |g: &TranslateGenerator| -> Vec<String> {
            g.generate(&proxy, TypeUrl::Cluster, &Names::All)
                .expect("generates")
                .into_iter()
                .map(|r| r.name)
                // Every sidecar also gets PassthroughCluster/BlackHoleCluster.
                .filter(|n| n.starts_with("outbound|"))
                .collect()
        };
        assert_eq!(
            names(&generator),
            vec!["outbound|80||a.shop.svc.cluster.local"]
        );
        tx.send_replace(inputs(&SE.replace("NAME", "b")));
        assert_eq!(
            names(&generator),
            vec!["outbound|80||b.shop.svc.cluster.local"]
        );
        let only = Names::some(["nothing"]);
        assert!(generator
            .generate(&proxy, TypeUrl::Cluster, &only)
            .expect("generates")
            .is_empty());
    }
    #[test]
    fn name_table_lists_reachable_hosts_with_clusterset_names_and_dns_clusters_carry_dns_fields() {
        use isthmus_gateway::dnsproxy::{NameIndex, NameTable};
        let external = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\n  namespace: shop\nspec:\n  hosts: [api.example.com]\n  resolution: DNS\n  ports:\n  - {number: 443, name: https, protocol: HTTPS}\n";
        let inputs = inputs(&format!("{}{external}", SE.replace("NAME", "a")));
        let node = Node {
            id: "sidecar~10.0.0.9~p.shop~shop.svc.cluster.local".into(),
            ..Default::default()
        };
        let proxy = Proxy::from_node(Some(&node)).expect("valid node");
        let r = generate(
            &inputs,
            &proxy,
            ProxyFlavor::Envoy,
            TypeUrl::NameTable,
            &Names::All,
        );
        assert_eq!(r.len(), 1);
        let table = NameTable::decode(r[0].body.value.as_slice()).expect("name table");
        let idx = NameIndex::from_table(&table).expect("valid table");
        let lo: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(idx.lookup("a.shop.svc.cluster.local"), Some(&[lo][..]));
        assert_eq!(idx.lookup("a.shop.svc.clusterset.local"), Some(&[lo][..]));
        assert_eq!(idx.lookup("api.example.com"), Some(&[lo][..]));
        assert_eq!(table.table["api.example.com"].registry, "External");

        let clusters = generate(
            &inputs,
            &proxy,
            ProxyFlavor::Envoy,
            TypeUrl::Cluster,
            &Names::All,
        );
        let c = clusters
            .iter()
            .find(|c| c.name == "outbound|443||api.example.com")
            .expect("DNS cluster");
        let c =
            envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(c.body.value.as_slice())
                .expect("cluster");
        #[allow(deprecated)]
        let (ttl, family) = (c.respect_dns_ttl, c.dns_lookup_family);
        assert!(ttl);
        assert_eq!(
            family,
            envoy_types::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily::All as i32
        );
        // And the gateway accepts what the control plane sends.
        isthmus_gateway::config::cluster_from_proto(&c).expect("gateway accepts the DNS cluster");

        // Gateways and capturing sidecars get no table.
        let gw = Node {
            id: "router~10.0.0.9~egress.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        };
        let gw = Proxy::from_node(Some(&gw)).expect("valid node");
        let r = generate(
            &inputs,
            &gw,
            ProxyFlavor::Envoy,
            TypeUrl::NameTable,
            &Names::All,
        );
        let table = NameTable::decode(r[0].body.value.as_slice()).expect("name table");
        assert!(table.table.is_empty());
    }
}
