//! Starting this cluster's federation node from its MeshConfig (or joining
//! a running federation with a join token), and what the cluster publishes
//! about itself.

pub mod admin;
pub mod token;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use isthmus_federation::membership::{self, Membership};
use isthmus_federation::model::{ClusterInfo, Locality};
use isthmus_federation::transport::quic::{
    node_issuer_rule_authorizer, PeerAddr, QuicConfig, QuicTransport,
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
    format!("{INTERMEDIATE_CN_PREFIX}{cluster_id}")
}

const INTERMEDIATE_CN_PREFIX: &str = "Isthmus intermediate CA ";

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
    // Configured members are checked against their own intermediate's name;
    // any other node id must come from the intermediate whose cluster name
    // hashes to it, which is how a cluster joining with a token (unknown to
    // the members beforehand) is recognised.
    let authorize = node_issuer_rule_authorizer(&control.to_uri(), move |id, issuer| {
        if let Some(want) = issuers.get(&id) {
            return if issuer == want {
                Ok(())
            } else {
                Err(format!(
                    "node id {id} must hold a certificate issued by `{want}`, this one was issued by `{issuer}`; a member is using another cluster's certificate"
                ))
            };
        }
        match issuer.strip_prefix(INTERMEDIATE_CN_PREFIX) {
            Some(name) if node_id(name) == id => Ok(()),
            Some(name) => Err(format!(
                "a certificate from cluster {name}'s intermediate cannot speak for node id {id} (cluster {name} is node {})",
                node_id(name)
            )),
            None => Err(format!(
                "node id {id} is not a known federation member and its certificate's issuer `{issuer}` is not a cluster intermediate"
            )),
        }
    });
    let mut qcfg = QuicConfig::new(me, bind, server_tls, client_tls, authorize);
    qcfg.peers.extend(peers);
    Ok((qcfg, voters.into_iter().collect()))
}

/// A running federation node and what the admin port serves for it.
pub struct Started {
    pub node: Node,
    pub admin: admin::FederationAdmin,
}

pub async fn start(
    opts: &ControlOptions,
    mesh: &MeshConfigSpec,
    certs: CertWatch,
    bundle: BundleWatch,
    metrics: &prometheus::Registry,
    roots_pem: &str,
) -> Result<Started, AppError> {
    let fed = mesh.federation.clone().unwrap_or_default();
    let listen = fed.listen.as_deref().ok_or_else(|| {
        AppError::Config("MeshConfig.spec.federation.listen is not set (the UDP address of this cluster's federation node)".into())
    })?;
    let join = match &opts.join_token_file {
        Some(path) => {
            let t = token::JoinToken::read(path)
                .map_err(|e| AppError::Config(format!("--join-token-file: {e}")))?;
            t.check_for(mesh.trust_domain(), roots_pem).map_err(|e| {
                AppError::Config(format!("--join-token-file {}: {e}", path.display()))
            })?;
            Some(t)
        }
        None => None,
    };
    let advertise =
        advertise_address(opts.federation_advertise.as_deref(), listen, join.is_some())?;
    let mut peers: Vec<(&str, &str)> = fed
        .peers
        .iter()
        .map(|p| (p.id.as_str(), p.address.as_str()))
        .collect();
    if let Some(t) = &join {
        for s in &t.seeds {
            if s.id != mesh.cluster_id && !peers.iter().any(|(n, _)| *n == s.id) {
                peers.push((s.id.as_str(), s.address.as_str()));
            }
        }
    }
    let names: BTreeMap<u64, String> = std::iter::once(mesh.cluster_id.as_str())
        .chain(peers.iter().map(|(n, _)| *n))
        .map(|n| (node_id(n), n.to_string()))
        .collect();
    let members = Members {
        me: &mesh.cluster_id,
        listen,
        peers,
    };
    let (qcfg, mut voters) = quic_config(mesh.trust_domain(), &members, certs, bundle)?;
    if join.is_some() {
        // A joining node votes in nothing until the leader adds it.
        voters.clear();
    }
    let me = qcfg.id;
    let fed_metrics = Metrics::new(metrics)?;
    let (transport, inbound) = QuicTransport::start(qcfg, fed_metrics.clone())
        .map_err(|e| AppError::Federation(e.to_string()))?;
    let mut cfg = NodeConfig::new(me, ControlOptions::federation_dir(&opts.data_dir), voters);
    cfg.tick_interval = opts.raft_tick;
    cfg.lease.renew_interval = opts.lease_renew;
    cfg.lease.ttl = opts.lease_ttl;
    let node = Node::start(cfg, transport.clone(), inbound, fed_metrics)
        .await
        .map_err(|e| AppError::Federation(e.to_string()))?;
    let handle = node.handle();
    let membership = Membership::new(handle.clone(), transport.clone(), &advertise);
    membership.install();
    membership::spawn_promoter(handle.clone(), opts.max_voters, PROMOTE_INTERVAL);
    info!(node = me, listen = %listen, advertise = %advertise, "federation node started");
    if let Some(t) = join {
        let status = handle
            .status()
            .await
            .map_err(|e| AppError::Federation(e.to_string()))?;
        if status.voters.contains(&me) || status.learners.contains(&me) {
            info!(
                node = me,
                "already a federation member (membership is on disk); the join token is not needed any more"
            );
        } else {
            let seeds: Vec<u64> = t.seeds.iter().map(|s| node_id(&s.id)).collect();
            info!(node = me, seeds = ?t.seeds.iter().map(|s| &s.address).collect::<Vec<_>>(), "joining the federation");
            membership::join_via_seeds(
                &transport,
                me,
                &mesh.cluster_id,
                &advertise,
                &seeds,
                opts.join_timeout,
            )
            .await
            .map_err(|e| AppError::Federation(format!("joining the federation: {e}")))?;
        }
    }
    Ok(Started {
        node,
        admin: admin::FederationAdmin {
            handle,
            membership,
            names,
        },
    })
}

/// How often the leader looks for learners to promote.
const PROMOTE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The address other members reach this node at: `--federation-advertise`,
/// else the listen address, which must then name a real interface.
fn advertise_address(flag: Option<&str>, listen: &str, joining: bool) -> Result<String, AppError> {
    if let Some(a) = flag {
        return Ok(a.to_string());
    }
    let unspecified = listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_unspecified())
        .unwrap_or(false);
    if unspecified && joining {
        return Err(AppError::Config(format!(
            "federation.listen is {listen}, which other members cannot dial; set --federation-advertise HOST:PORT (the address the other clusters reach this node at)"
        )));
    }
    Ok(listen.to_string())
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
