//! Starting this cluster's federation node from its MeshConfig, and what the
//! cluster publishes about itself.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use isthmus_federation::model::{ClusterInfo, Locality};
use isthmus_federation::transport::quic::{
    node_issuer_authorizer, PeerAddr, QuicConfig, QuicTransport,
};
use isthmus_federation::{Metrics, Node, NodeConfig, RegistrySnapshot};
use isthmus_identity::{BundleWatch, CertWatch, PeerPolicy, SpiffeId, TrustBundle};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{AppError, ControlOptions};
use crate::config::MeshConfigSpec;

/// ALPN of the Raft peer protocol, so a federation port never talks to
/// anything else by mistake.
const RAFT_ALPN: &[u8] = b"isthmus-raft/1";

/// Raft wants numeric node ids; operators name clusters. The id is a stable
/// hash of the cluster id (FNV-1a), so every node derives the same ids from
/// the same peer list without another setting to keep in sync.
pub fn node_id(cluster_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// The subject common name `isthmus ca intermediate --cluster ID` gives the
/// intermediate of cluster ID.
pub fn intermediate_common_name(cluster_id: &str) -> String {
    format!("Isthmus intermediate CA {cluster_id}")
}

/// This node and the other members, as names (cluster ids, or a witness's
/// name) and federation addresses.
pub struct Members<'a> {
    pub me: &'a str,
    pub listen: &'a str,
    pub peers: Vec<(&'a str, &'a str)>,
}

/// The QUIC transport settings shared by control planes and witnesses, and
/// the initial voter set (this node plus every peer).
pub fn quic_config(
    trust_domain: &str,
    members: &Members<'_>,
    certs: CertWatch,
    bundle: BundleWatch,
) -> Result<(QuicConfig, Vec<u64>), AppError> {
    let bind = members.listen.parse().map_err(|e| {
        AppError::Config(format!(
            "federation listen address `{}`: {e}",
            members.listen
        ))
    })?;
    let me = node_id(members.me);
    let mut voters = BTreeSet::from([me]);
    let mut issuers = HashMap::from([(me, intermediate_common_name(members.me))]);
    let mut peers = Vec::new();
    for (name, address) in &members.peers {
        let id = node_id(name);
        voters.insert(id);
        issuers.insert(id, intermediate_common_name(name));
        if *name != members.me {
            let addr = PeerAddr::parse(address, "federation.isthmus.local")
                .map_err(|e| AppError::Config(format!("federation peer {name}: {e}")))?;
            peers.push((id, addr));
        }
    }
    let server_tls = isthmus_identity::tls::server_config(
        certs.clone(),
        bundle.clone(),
        PeerPolicy::trust_domain(trust_domain),
        true,
        &[RAFT_ALPN],
    )
    .map_err(|e| AppError::Identity(e.to_string()))?;
    let client_tls = isthmus_identity::tls::client_config(
        Some(certs),
        bundle,
        PeerPolicy::trust_domain(trust_domain),
        &[RAFT_ALPN],
    )
    .map_err(|e| AppError::Identity(e.to_string()))?;
    // Every member presents the control plane's identity; what ties a
    // certificate to one Raft node id is the intermediate that issued it,
    // so one cluster's CA cannot speak for another cluster's node.
    let control = SpiffeId::new(
        trust_domain,
        super::CONTROL_NAMESPACE,
        super::CONTROL_SERVICE_ACCOUNT,
    )
    .map_err(|e| AppError::Identity(e.to_string()))?;
    let authorize = node_issuer_authorizer(&control.to_uri(), move |id| issuers.get(&id).cloned());
    let mut qcfg = QuicConfig::new(me, bind, server_tls, client_tls, authorize);
    qcfg.peers.extend(peers);
    Ok((qcfg, voters.into_iter().collect()))
}

pub async fn start(
    opts: &ControlOptions,
    mesh: &MeshConfigSpec,
    certs: CertWatch,
    bundle: BundleWatch,
    metrics: &prometheus::Registry,
) -> Result<Node, AppError> {
    let fed = mesh.federation.clone().unwrap_or_default();
    let listen = fed.listen.as_deref().ok_or_else(|| {
        AppError::Config("MeshConfig.spec.federation.listen is not set (the UDP address of this cluster's federation node)".into())
    })?;
    let members = Members {
        me: &mesh.cluster_id,
        listen,
        peers: fed
            .peers
            .iter()
            .map(|p| (p.id.as_str(), p.address.as_str()))
            .collect(),
    };
    let (qcfg, voters) = quic_config(mesh.trust_domain(), &members, certs, bundle)?;
    let me = qcfg.id;
    let fed_metrics = Metrics::new(metrics)?;
    let (transport, inbound) = QuicTransport::start(qcfg, fed_metrics.clone())
        .map_err(|e| AppError::Federation(e.to_string()))?;
    let mut cfg = NodeConfig::new(me, ControlOptions::federation_dir(&opts.data_dir), voters);
    cfg.tick_interval = opts.raft_tick;
    cfg.lease.renew_interval = opts.lease_renew;
    cfg.lease.ttl = opts.lease_ttl;
    let node = Node::start(cfg, transport, inbound, fed_metrics)
        .await
        .map_err(|e| AppError::Federation(e.to_string()))?;
    info!(node = me, listen = %listen, "federation node started");
    Ok(node)
}

pub fn cluster_info(mesh: &MeshConfigSpec, intermediate_pem: &str, root_pem: &str) -> ClusterInfo {
    let gw = mesh.gateways.clone().unwrap_or_default();
    let locality = mesh.locality.clone().unwrap_or_default();
    ClusterInfo {
        id: mesh.cluster_id.clone(),
        network: mesh.network.clone().unwrap_or_default(),
        locality: Locality {
            region: locality.region.unwrap_or_default(),
            zone: locality.zone.unwrap_or_default(),
            subzone: locality.subzone.unwrap_or_default(),
        },
        eastwest_tcp: gw.east_west.into_iter().collect(),
        eastwest_quic: gw.east_west_quic.into_iter().collect(),
        ingress: gw.ingress,
        intermediate_pem: intermediate_pem.to_string(),
        roots_pem: vec![root_pem.to_string()],
    }
}

/// The trust bundle is every root any member cluster publishes, plus our
/// own (so a registry outage never shrinks it). Adding a new root in one
/// cluster therefore reaches every proxy of the federation: the first step
/// of a root rotation.
pub async fn follow_trust_bundle(
    mut registry: watch::Receiver<Arc<RegistrySnapshot>>,
    own_root: String,
    bundle: watch::Sender<Arc<TrustBundle>>,
) {
    loop {
        let snap = registry.borrow_and_update().clone();
        let mut pems = vec![(own_root.clone(), "this cluster's root-cert.pem".to_string())];
        for c in snap.clusters.values() {
            for pem in &c.roots_pem {
                pems.push((pem.clone(), format!("root published by cluster {}", c.id)));
            }
        }
        match TrustBundle::from_pems(pems.iter().map(|(p, w)| (w.as_str(), p.as_str()))) {
            Ok(next) => {
                if !bundle.borrow().fingerprints().eq(next.fingerprints()) {
                    info!(roots = next.len(), "trust bundle changed");
                    bundle.send_replace(Arc::new(next));
                }
            }
            Err(e) => {
                warn!(error = %e, "a root published in the registry is invalid; keeping the current trust bundle")
            }
        }
        if registry.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::node_id;

    #[test]
    fn node_ids_are_stable_distinct_and_nonzero() {
        assert_eq!(node_id("us-east"), node_id("us-east"));
        assert_ne!(node_id("us-east"), node_id("us-west"));
        assert_ne!(node_id(""), 0);
    }
}
