//! Join mode and leave over the real QUIC transport on loopback: a node with
//! no bootstrap voters joins through a seed (forwarded to the leader) under
//! write load, catches up, is promoted while the voter count is below the
//! maximum (a later joiner stays a learner), survives a restart without
//! asking again, and the leader leaves after handing over leadership.

mod common;

use common::pki::{Ca, SERVER_NAME};
use common::{publish_one, register, WAIT};
use isthmus_federation::fixtures::key;
use isthmus_federation::membership::{
    join_via_seeds, spawn_promoter, MemberReply, MemberRequest, Membership, MembershipError,
};
use isthmus_federation::testing::fast_config;
use isthmus_federation::transport::quic::{
    trust_domain_authorizer, PeerAddr, QuicConfig, QuicError, QuicTransport,
};
use isthmus_federation::{recovery, Handle, Metrics, Node, Role};
use raft::eraftpb::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

const TD: &str = "federation.test";
const MAX_VOTERS: usize = 4;

struct Member {
    node: Node,
    transport: Arc<QuicTransport>,
    address: String,
    promoter: tokio::task::JoinHandle<()>,
}

impl Member {
    fn handle(&self) -> Handle {
        self.node.handle()
    }

    async fn stop(self) {
        self.promoter.abort();
        self.node.stop().await;
        self.transport.close();
    }
}

fn address(t: &QuicTransport) -> String {
    format!("{SERVER_NAME}@{}", t.local_addr().unwrap())
}

/// Binds node `id`'s QUIC endpoint on `bind`. A restart on the address a
/// stopped member used retries while its old socket is still draining.
fn bind(ca: &Ca, id: u64, bind: &str) -> (Arc<QuicTransport>, mpsc::Receiver<Message>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (server, client) = ca.node_tls(TD, id);
        let cfg = QuicConfig::new(
            id,
            bind.parse().unwrap(),
            server,
            client,
            trust_domain_authorizer(TD),
        );
        match QuicTransport::start(cfg, Metrics::unregistered().unwrap()) {
            Ok(t) => return t,
            Err(e @ QuicError::Bind { .. }) if std::time::Instant::now() < deadline => {
                eprintln!("retrying bind of node {id}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("node {id}: {e}"),
        }
    }
}

/// Starts node `id` on a bound transport with `voters` (empty: joining)
/// and `peers`.
async fn start_bound(
    dir: &Path,
    id: u64,
    (transport, inbound): (Arc<QuicTransport>, mpsc::Receiver<Message>),
    voters: Vec<u64>,
    peers: &[(u64, String)],
) -> Member {
    for (p, a) in peers {
        transport.add_peer(*p, PeerAddr::parse(a, SERVER_NAME).unwrap());
    }
    let mut config = fast_config(id, dir.join(format!("node-{id}")), voters);
    // Nothing renews c1's lease here: the restored registry must compare
    // equal to the original whenever the comparison runs, so the lease
    // never expires within the test.
    config.lease.ttl = Duration::from_secs(3600);
    let node = Node::start(
        config,
        transport.clone(),
        inbound,
        Metrics::unregistered().unwrap(),
    )
    .await
    .unwrap();
    let address = address(&transport);
    let membership = Membership::new(node.handle(), transport.clone(), &address);
    membership.install();
    let promoter = spawn_promoter(node.handle(), MAX_VOTERS, Duration::from_millis(100));
    Member {
        node,
        transport,
        address,
        promoter,
    }
}

/// Starts node `id` on `bind` with `voters` (empty: joining) and `peers`.
async fn start_member(
    ca: &Ca,
    dir: &Path,
    id: u64,
    bind_to: &str,
    voters: Vec<u64>,
    peers: &[(u64, String)],
) -> Member {
    start_bound(dir, id, bind(ca, id, bind_to), voters, peers).await
}

async fn leader_of(members: &BTreeMap<u64, Member>) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        for m in members.values() {
            if let Ok(s) = m.handle().status().await {
                if s.role == Role::Leader {
                    return s.id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the leader's configuration satisfies `ok(voters, learners)`.
async fn wait_conf(
    members: &BTreeMap<u64, Member>,
    what: &str,
    ok: impl Fn(&[u64], &[u64]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = leader_of(members).await;
        let s = members[&l].handle().status().await.unwrap();
        if ok(&s.voters, &s.learners) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: voters {:?} learners {:?}",
            s.voters,
            s.learners
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Aborts the write load when the test ends, also when it fails.
struct Load(tokio::task::JoinHandle<()>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes `svc-N` through the given members in turn, recording each
/// acknowledged N.
fn write_load(handles: Vec<Handle>, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<u64>>>) -> Load {
    Load(tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let h = &handles[(n as usize) % handles.len()];
            match publish_one(h, "c1", n).await {
                Ok(_) => acked.lock().unwrap().push(n),
                // A member that stopped (it left) fails at once; do not spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_with_seeds_under_load_is_promoted_and_the_leader_leaves() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    // Bind every endpoint first (port 0, held), then tell everyone the
    // addresses.
    let bound: Vec<_> = (1..=3u64)
        .map(|id| (id, bind(&ca, id, "127.0.0.1:0")))
        .collect();
    let addrs: Vec<(u64, String)> = bound.iter().map(|(id, (t, _))| (*id, address(t))).collect();
    let mut members = BTreeMap::new();
    for (id, t) in bound {
        let peers: Vec<(u64, String)> = addrs.iter().filter(|(p, _)| *p != id).cloned().collect();
        members.insert(
            id,
            start_bound(dir.path(), id, t, vec![1, 2, 3], &peers).await,
        );
    }
    register(&members[&1].handle(), "c1").await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut load = write_load(
        members.values().map(Member::handle).collect(),
        stop.clone(),
        acked.clone(),
    );
    while acked.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Node 4 joins through seed 2 (whoever leads; non-leaders forward).
    let seed = (2, members[&2].address.clone());
    let joiner = start_member(
        &ca,
        dir.path(),
        4,
        "127.0.0.1:0",
        vec![],
        std::slice::from_ref(&seed),
    )
    .await;
    assert!(joiner.handle().status().await.unwrap().voters.is_empty());
    let got = join_via_seeds(
        &joiner.transport,
        4,
        "c4",
        &joiner.address,
        &[2],
        Duration::from_secs(15),
    )
    .await
    .expect("join through a seed");
    assert!(got.iter().any(|(id, _)| *id == 1), "members: {got:?}");
    let addr4 = joiner.address.clone();
    members.insert(4, joiner);
    wait_conf(&members, "node 4 promoted", |v, _| v.contains(&4)).await;

    // Node 5 joins too but stays a learner: the voter maximum is 4.
    let joiner = start_member(&ca, dir.path(), 5, "127.0.0.1:0", vec![], &[seed]).await;
    join_via_seeds(
        &joiner.transport,
        5,
        "c5",
        &joiner.address,
        &[2],
        Duration::from_secs(15),
    )
    .await
    .expect("second join");
    members.insert(5, joiner);
    wait_conf(&members, "node 5 a learner", |_, l| l.contains(&5)).await;

    // A member cannot ask to join as another node.
    let body = serde_json::to_vec(&MemberRequest::Join {
        node: 9,
        name: "c9".into(),
        address: "127.0.0.1:9".into(),
        forwarded: false,
    })
    .unwrap();
    let reply = members[&5]
        .transport
        .request(2, &body, Duration::from_secs(5))
        .await
        .unwrap();
    let reply: MemberReply = serde_json::from_slice(&reply).unwrap();
    assert!(
        matches!(&reply, MemberReply::Refused { reason } if reason.contains("only ask to join as itself")),
        "{reply:?}"
    );

    // Node 4 restarts from disk: no token, no join request, still a member
    // that knows where everyone lives.
    let m4 = members.remove(&4).unwrap();
    let bind4 = m4.transport.local_addr().unwrap().to_string();
    m4.stop().await;
    let m4 = start_member(&ca, dir.path(), 4, &bind4, vec![], &[]).await;
    assert_eq!(m4.address, addr4);
    let s4 = m4.handle().status().await.unwrap();
    assert!(s4.voters.contains(&4), "membership persisted: {s4:?}");
    members.insert(4, m4);

    // The leader leaves: leadership moves first, then it is removed.
    let old = leader_of(&members).await;
    let other = *members.keys().find(|id| **id != old && **id != 5).unwrap();
    let via = Membership::new(
        members[&other].handle(),
        members[&other].transport.clone(),
        &members[&other].address,
    );
    via.leave(old, Duration::from_secs(20))
        .await
        .expect("leader leaves");
    let gone = members.remove(&old).unwrap();
    wait_conf(&members, "old leader removed", |v, l| {
        !v.contains(&old) && !l.contains(&old)
    })
    .await;
    gone.stop().await;
    // The learner fills the freed voter slot.
    wait_conf(&members, "node 5 promoted after a voter left", |v, _| {
        v.contains(&5)
    })
    .await;

    let before = acked.lock().unwrap().len();
    let deadline = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < before + 20 {
        assert!(Instant::now() < deadline, "writes stalled after the leave");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    (&mut load.0).await.unwrap();

    // Every acknowledged write is on the joiners, read linearizably.
    let acked = acked.lock().unwrap().clone();
    for id in [4u64, 5] {
        let view = members[&id].handle().read_linearizable().await.unwrap();
        for n in &acked {
            assert!(
                view.services["c1"].contains_key(&key("default", &format!("svc-{n}"))),
                "acknowledged write {n} missing on joiner {id}"
            );
        }
    }

    // Snapshot save (consistent, through JSON as the admin port sends it,
    // checksummed file) and restore into a fresh federation: identical.
    let h = members[&4].handle();
    let image = h.consistent_image().await.unwrap();
    let wire = serde_json::to_vec(&image).unwrap();
    let sent = recovery::checksum(&wire);
    assert_eq!(recovery::checksum(&wire), sent);
    let received = serde_json::from_slice(&wire).unwrap();
    let file = dir.path().join("registry.snap");
    recovery::save_image(&received, &file).unwrap();
    let loaded = recovery::load(&file).unwrap();
    let fresh: PathBuf = dir.path().join("restored");
    recovery::restore(&loaded, &fresh.join("node-77"), 77).unwrap();
    let restored = start_member(&ca, &fresh, 77, "127.0.0.1:0", vec![], &[]).await;
    let view = restored.handle().read_linearizable().await.unwrap();
    let original = members[&4].handle().snapshot_stale();
    assert_eq!(view.revision, image.revision);
    assert_eq!(view.clusters, original.clusters);
    assert_eq!(view.services, original.services);
    restored.stop().await;

    for (_, m) in members {
        m.stop().await;
    }
}

#[tokio::test]
async fn joining_without_a_reachable_seed_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    // A port nobody listens on.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let m = start_member(&ca, dir.path(), 8, "127.0.0.1:0", vec![], &[(3, dead)]).await;
    let err = join_via_seeds(
        &m.transport,
        8,
        "c8",
        &m.address,
        &[3],
        Duration::from_millis(1500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, MembershipError::NoSeedReachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("seed 3"), "{err}");
    m.stop().await;
}
