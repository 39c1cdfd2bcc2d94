//! The YAML a generated cluster runs with: its MeshConfig (identity,
//! gateways, federation peers) and its services as Istio `ServiceEntry` /
//! `WorkloadEntry` plus MCS `ServiceExport`, as `docs/architecture.md`
//! describes for file mode.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::spec::{Block, ClusterSpec};

/// One federation peer as the MeshConfig lists it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: String,
    pub address: SocketAddr,
}

/// What the MeshConfig of one cluster says.
#[derive(Debug, Clone)]
pub struct MeshInputs<'a> {
    pub cluster: &'a ClusterSpec,
    pub block: Block,
    pub trust_domain: &'a str,
    /// The east-west address advertised to the federation (the gateway or
    /// a fault proxy in front of it).
    pub eastwest_advertised: SocketAddr,
    pub peers: Vec<Peer>,
}

pub fn mesh_config(m: &MeshInputs<'_>) -> String {
    let c = m.cluster;
    let mut s = String::new();
    // Writing into a String cannot fail; the results are ignored on purpose.
    let _ = write!(
        s,
        "apiVersion: isthmus.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
  namespace: istio-system
spec:
{extra}  clusterId: {id}
  network: {net}
  trustDomain: {td}
  locality:
    region: {region}
    zone: {zone}
  gateways:
    eastWest: {ew}
{quic}    ingress:
    - {ingress}
  federation:
    listen: {listen}
    peers:
",
        extra = c.mesh_extra,
        id = c.name,
        net = c.network,
        td = m.trust_domain,
        region = c.region,
        zone = c.zone,
        ew = m.eastwest_advertised,
        quic = crate::tunnel::mesh_gateway_lines(c, m.eastwest_advertised),
        ingress = m.block.ingress(),
        listen = m.block.federation(),
    );
    if m.peers.is_empty() {
        s.truncate(s.len() - "    peers:\n".len());
        s.push_str("    peers: []\n");
    }
    for p in &m.peers {
        let _ = writeln!(s, "    - id: {}\n      address: {}", p.id, p.address);
        s.push_str(crate::tunnel::mesh_peer_lines(c));
    }
    s
}

/// ServiceEntries, ServiceExports and WorkloadEntries of one cluster.
pub fn workloads(c: &ClusterSpec, block: Block) -> String {
    let mut docs: Vec<String> = Vec::new();
    for svc in &c.services {
        docs.push(format!(
            "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts:
  - {host}
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {port}{declared}
  workloadSelector:
    labels:
      app: {name}
",
            name = svc.name,
            ns = svc.namespace,
            host = svc.host(),
            port = svc.port,
            // No protocol: an unnamed port, which Istio's rules sniff.
            declared = if svc.protocol.is_empty() {
                String::new()
            } else {
                format!(
                    "\n    name: {}\n    protocol: {}",
                    svc.protocol.to_ascii_lowercase(),
                    svc.protocol
                )
            },
        ));
        if svc.export {
            docs.push(format!(
                "apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: {}
  namespace: {}
",
                svc.name, svc.namespace
            ));
        }
    }
    for (i, w) in c.workloads.iter().enumerate() {
        let k = u8::try_from(i + 1).unwrap_or(u8::MAX);
        let ns = c
            .service_spec(&w.service)
            .map(|s| s.namespace.as_str())
            .unwrap_or("default");
        let mut doc = format!(
            "apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: {ns}
spec:
  address: {addr}
  serviceAccount: {sa}
  labels:
    app: {app}
    version: {ver}
",
            name = w.name,
            addr = block.workload_ip(k),
            sa = w.service_account,
            app = w.service,
            ver = w.version,
        );
        if let Some(zone) = &w.zone {
            let _ = writeln!(doc, "  locality: {}/{}", c.region, zone);
        }
        docs.push(doc);
    }
    docs.join("---\n")
}

/// Bootstrap tokens (`TOKEN NS/SA` per line) for every service account of
/// the cluster, and the token of each workload by name.
pub fn tokens(c: &ClusterSpec, secret: &str) -> (String, Vec<(String, String)>) {
    let mut file = String::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut per_workload = Vec::new();
    for w in &c.workloads {
        let ns = c
            .service_spec(&w.service)
            .map(|s| s.namespace.clone())
            .unwrap_or_else(|| "default".to_string());
        let token = format!("{}-{}-{}", c.name, w.service_account, secret);
        if seen.insert(token.clone()) {
            let _ = writeln!(file, "{token} {ns}/{}", w.service_account);
        }
        per_workload.push((w.name.clone(), token));
    }
    (file, per_workload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::FederationSpec;

    #[test]
    fn mesh_config_lists_peers_and_advertised_gateway() {
        let f = FederationSpec::bookinfo();
        let block = Block { octet: 31 };
        let ew: SocketAddr = "127.31.0.12:15443".parse().unwrap();
        let yaml = mesh_config(&MeshInputs {
            cluster: &f.clusters[0],
            block,
            trust_domain: "t.local",
            eastwest_advertised: ew,
            peers: vec![Peer {
                id: "us-west".into(),
                address: "127.32.0.1:15031".parse().unwrap(),
            }],
        });
        assert!(yaml.contains("clusterId: us-east"), "{yaml}");
        assert!(yaml.contains("eastWest: 127.31.0.12:15443"), "{yaml}");
        assert!(yaml.contains("listen: 127.31.0.1:15031"), "{yaml}");
        assert!(
            yaml.contains("- id: us-west\n      address: 127.32.0.1:15031"),
            "{yaml}"
        );
    }

    #[test]
    fn workloads_render_entries_with_addresses_from_the_block() {
        let f = FederationSpec::bookinfo();
        let yaml = workloads(&f.clusters[0], Block { octet: 40 });
        assert!(yaml.contains("address: 127.40.1.2"), "{yaml}");
        assert!(yaml.contains("number: 9081"), "{yaml}");
        assert_eq!(yaml.matches("kind: ServiceExport").count(), 2, "{yaml}");
        assert_eq!(yaml.matches("kind: WorkloadEntry").count(), 3, "{yaml}");
    }

    #[test]
    fn tokens_are_long_enough_and_one_per_account() {
        let f = FederationSpec::bookinfo();
        let (file, per) = tokens(&f.clusters[0], "s3cr3t");
        assert_eq!(file.lines().count(), 2, "{file}");
        assert_eq!(per.len(), 3);
        assert!(per.iter().all(|(_, t)| t.len() >= 16));
        assert!(file.contains(" default/bookinfo-reviews"));
    }
}
