use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use isthmus_federation::model::{
    ClusterInfo, ClusterService, Endpoint, ExportedService, Health as EpHealth, Locality,
    ServiceKey, ServicePort,
};
use isthmus_federation::{LeaseState, RegistrySnapshot};

use super::super::merge::{merge, Poll};
use super::super::rates::{EdgeKey, Protocol, Reporter};
use super::*;
use crate::app::admin::views::{
    self, ConfigView, FederationView, PeerView, ProxyView, StatusView, TypeView,
};
use crate::app::federation::node_id;

fn cluster(id: &str) -> ClusterInfo {
    ClusterInfo {
        id: id.into(),
        network: format!("net-{id}"),
        locality: Locality {
            region: id.into(),
            zone: format!("{id}-1a"),
            subzone: String::new(),
        },
        eastwest_tcp: vec![format!("{id}.example:15443")],
        eastwest_quic: vec![],
        ingress: vec![],
        intermediate_pem: String::new(),
        roots_pem: vec![],
    }
}

fn reviews(cluster: &str, healthy: usize, unhealthy: usize) -> ClusterService {
    let ep = |i: usize, health| Endpoint {
        address: format!("10.0.0.{i}"),
        ports: BTreeMap::from([("http".to_string(), 9080)]),
        labels: BTreeMap::new(),
        service_account: "bookinfo-reviews".into(),
        locality: Locality::default(),
        weight: 1,
        health,
    };
    ClusterService {
        cluster: cluster.into(),
        service: ExportedService {
            key: ServiceKey {
                namespace: "default".into(),
                name: "reviews".into(),
            },
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                protocol: "HTTP".into(),
                target_port: 9080,
            }],
            labels: BTreeMap::new(),
        },
        endpoints: (0..healthy)
            .map(|i| ep(i, EpHealth::Healthy))
            .chain((0..unhealthy).map(|i| ep(100 + i, EpHealth::Unhealthy)))
            .collect(),
    }
}

/// us-east, us-west, eu-central; us-east's lease expired when `east_down`.
fn snapshot(east_down: bool, applied: u64) -> RegistrySnapshot {
    let mut s = RegistrySnapshot {
        revision: applied,
        applied_index: applied,
        ..RegistrySnapshot::default()
    };
    for id in ["us-east", "us-west", "eu-central"] {
        s.clusters.insert(id.into(), cluster(id));
        s.leases.insert(
            id.into(),
            LeaseState {
                renewed_at: 5,
                expired: east_down && id == "us-east",
            },
        );
    }
    for (id, healthy) in [("us-east", 2), ("eu-central", 1)] {
        let cs = reviews(id, healthy, 1);
        s.services
            .entry(id.into())
            .or_default()
            .insert(cs.service.key.clone(), cs);
    }
    s
}

fn fed(
    node: &str,
    role: &str,
    leader: &str,
    term: u64,
    applied: u64,
    peers: Vec<PeerView>,
) -> FederationView {
    FederationView {
        node: node_id(node),
        role: role.into(),
        leader: node_id(leader),
        term,
        commit: applied,
        applied,
        peers,
    }
}

fn proxy(node_id: &str, role: &str, state: &str) -> ProxyView {
    ProxyView {
        node_id: node_id.into(),
        stream: 1,
        kind: "delta".into(),
        cluster_id: Some("us-west".into()),
        role: role.into(),
        connected_secs: 3,
        types: BTreeMap::from([
            (
                "cds".to_string(),
                TypeView {
                    state: "synced".into(),
                    resources: 1,
                    sent_version: None,
                    acked_version: None,
                    input_version: 1,
                    nack: None,
                    generate_error: None,
                },
            ),
            (
                "lds".to_string(),
                TypeView {
                    state: state.into(),
                    resources: 1,
                    sent_version: None,
                    acked_version: None,
                    input_version: 1,
                    nack: (state == "nacked")
                        .then(|| "version 2 rejected: bad listener".to_string()),
                    generate_error: None,
                },
            ),
        ]),
    }
}

fn status(local: &str, snap: &RegistrySnapshot, federation: Option<FederationView>) -> StatusView {
    StatusView {
        cluster: local.into(),
        config: ConfigView {
            version: 3,
            resources: 7,
            errors: vec![],
            warnings: vec![],
        },
        registry: views::registry_view(snap),
        federation,
        federation_error: None,
        proxies: vec![
            proxy(
                "router~127.0.0.2~east-west.istio-system~istio-system.svc.cluster.local",
                "east-west",
                "synced",
            ),
            proxy(
                "sidecar~127.0.1.1~productpage-v1.default~default.svc.cluster.local",
                "sidecar",
                "nacked",
            ),
        ],
    }
}

fn edge(source: &str, dest: &str, reporter: Reporter, rps: f64, errors: f64) -> EdgeState {
    EdgeState::new(
        EdgeKey {
            source: source.into(),
            source_cluster: Some("us-west".into()),
            destination: dest.into(),
            destination_cluster: (reporter == Reporter::Destination).then(|| "us-east".to_string()),
            reporter,
            protocol: Protocol::Http,
        },
        rps,
        errors,
    )
}

fn traffic(edges: Vec<EdgeState>) -> TrafficState {
    TrafficState {
        collected_at_ms: 1,
        window_secs: Some(1.0),
        targets: 2,
        scraped: 2,
        edges,
        errors: vec![],
    }
}

fn build_for(
    local: &str,
    snap: &RegistrySnapshot,
    fed: Option<FederationView>,
    t: TrafficState,
) -> DashboardState {
    let st = status(local, snap, fed);
    build(Inputs {
        status: &st,
        snapshot: snap,
        peers: &["witness-1".to_string()],
        traffic: &t,
        now: SystemTime::UNIX_EPOCH + Duration::from_millis(1234),
    })
}

#[test]
fn the_document_has_the_shape_the_page_reads() {
    let snap = snapshot(false, 40);
    let leader = fed(
        "us-west",
        "leader",
        "us-west",
        4,
        40,
        vec![
            PeerView {
                id: node_id("us-east"),
                lag: 0,
                state: "Replicate".into(),
            },
            PeerView {
                id: node_id("eu-central"),
                lag: 3,
                state: "Probe".into(),
            },
        ],
    );
    let doc = build_for(
        "us-west",
        &snap,
        Some(leader),
        traffic(vec![edge(
            "productpage-v1",
            "reviews.default.svc.cluster.local",
            Reporter::Source,
            20.0,
            1.0,
        )]),
    );
    let v = serde_json::to_value(&doc).unwrap();
    assert_eq!(v["generatedAtMs"], 1234);
    let east = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "us-east")
        .unwrap();
    assert_eq!(east["lease"], "active");
    assert_eq!(east["health"], "up");
    assert_eq!(east["control"], "unknown");
    assert_eq!(east["locality"], "us-east/us-east-1a");
    assert_eq!(east["services"], 1);
    assert_eq!(east["endpoints"], 3);
    let west = v["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "us-west")
        .unwrap();
    assert_eq!(west["control"], "reachable");
    assert_eq!(west["raftRole"], "leader");

    assert_eq!(v["raft"]["leader"], "us-west");
    assert_eq!(v["raft"]["term"], 4);
    let member = |name: &str| {
        v["raft"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(member("eu-central")["lag"], 3);
    assert_eq!(member("eu-central")["state"], "Probe");
    assert_eq!(member("us-west")["lag"], 0);
    // Named from the MeshConfig's peers although not in the registry.
    assert_eq!(member("witness-1")["lag"], serde_json::Value::Null);

    let svc = &v["services"][0];
    assert_eq!(svc["name"], "reviews");
    assert_eq!(svc["ports"][0], "HTTP 9080");
    assert_eq!(svc["instances"][0]["cluster"], "eu-central");
    assert_eq!(svc["instances"][0]["healthy"], 1);
    assert_eq!(svc["instances"][1]["endpoints"], 3);
    assert_eq!(svc["instances"][1]["available"], true);

    let e = &v["traffic"]["edges"][0];
    assert_eq!(e["source"], "productpage-v1");
    assert_eq!(e["sourceCluster"], "us-west");
    assert_eq!(e["destination"], "reviews.default.svc.cluster.local");
    assert_eq!(e["reporter"], "source");
    assert_eq!(e["protocol"], "http");
    assert_eq!(e["rps"], 20.0);
    assert!(
        (e["successRate"].as_f64().unwrap() - 0.95).abs() < 1e-9,
        "{e}"
    );

    // The local east-west gateway is connected and synced; others unknown.
    let gw: Vec<&serde_json::Value> = v["gateways"].as_array().unwrap().iter().collect();
    let local = gw.iter().find(|g| g["cluster"] == "us-west").unwrap();
    assert_eq!(local["role"], "east-west");
    assert_eq!(local["addresses"][0], "us-west.example:15443");
    assert_eq!(local["proxies"][0]["xds"], "synced");
    let remote = gw.iter().find(|g| g["cluster"] == "us-east").unwrap();
    assert_eq!(remote["proxies"], serde_json::Value::Null);

    assert_eq!(v["sources"][0]["proxies"], 2);
    assert_eq!(v["sources"][0]["proxiesSynced"], 1);
    assert!(
        doc.problems
            .iter()
            .any(|p| p.contains("rejected lds") && p.contains("bad listener")),
        "{:?}",
        doc.problems
    );

    // It reads back, which `isthmus dashboard` relies on.
    let back: DashboardState = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
}

#[test]
fn an_expired_lease_is_down_and_its_service_unavailable() {
    let snap = snapshot(true, 50);
    let doc = build_for("us-west", &snap, None, traffic(vec![]));
    let east = doc
        .clusters
        .iter()
        .find(|c| c.view.id == "us-east")
        .unwrap();
    assert_eq!(east.view.lease, "expired");
    assert_eq!(east.health, Health::Down);
    let inst = doc.services[0]
        .instances
        .iter()
        .find(|i| i.cluster == "us-east")
        .unwrap();
    assert!(!inst.available);
    assert_eq!(doc.raft.leader, None);
}

#[test]
fn health_combines_lease_and_reachability() {
    assert_eq!(health("active", Reach::Unknown), Health::Up);
    assert_eq!(health("active", Reach::Unreachable), Health::Unreachable);
    assert_eq!(health("expired", Reach::Reachable), Health::Partitioned);
    assert_eq!(health("expired", Reach::Unreachable), Health::Down);
    assert_eq!(health("none", Reach::Reachable), Health::Unknown);
}

#[test]
fn the_callers_count_wins_over_the_callees() {
    let host = "reviews.default.svc.cluster.local";
    let edges = combine_edges(vec![
        edge("productpage-v1", host, Reporter::Source, 10.0, 0.0),
        edge("productpage-v1", host, Reporter::Source, 5.0, 5.0),
        edge("productpage-v1", host, Reporter::Destination, 14.0, 0.0),
        // Only the callee saw this one (no sidecar on the caller).
        edge("ingress", host, Reporter::Destination, 2.0, 0.0),
    ]);
    assert_eq!(edges.len(), 2, "{edges:?}");
    let pp = edges
        .iter()
        .find(|e| e.key.source == "productpage-v1")
        .unwrap();
    assert_eq!(pp.key.reporter, Reporter::Source);
    assert_eq!(pp.rps, 15.0);
    assert!((pp.success_rate.unwrap() - 10.0 / 15.0).abs() < 1e-9);
    let ing = edges.iter().find(|e| e.key.source == "ingress").unwrap();
    assert_eq!(ing.key.reporter, Reporter::Destination);
    // Without requests there is no success rate to show.
    assert_eq!(
        edge("a", "b", Reporter::Source, 0.0, 0.0).success_rate,
        None
    );
}

#[test]
fn merging_shows_a_dead_cluster_down_and_takes_the_freshest_registry() {
    let host = "reviews.default.svc.cluster.local";
    // Before the kill us-east answered with an old registry.
    let east_old = build_for(
        "us-east",
        &snapshot(false, 30),
        Some(fed("us-east", "leader", "us-east", 2, 30, vec![])),
        traffic(vec![edge(
            "productpage-v1",
            host,
            Reporter::Destination,
            9.0,
            0.0,
        )]),
    );
    let west = build_for(
        "us-west",
        &snapshot(true, 60),
        Some(fed(
            "us-west",
            "leader",
            "us-west",
            3,
            60,
            vec![PeerView {
                id: node_id("eu-central"),
                lag: 1,
                state: "Replicate".into(),
            }],
        )),
        traffic(vec![edge(
            "productpage-v1",
            host,
            Reporter::Source,
            10.0,
            0.0,
        )]),
    );
    let eu = build_for(
        "eu-central",
        &snapshot(true, 59),
        Some(fed("eu-central", "follower", "us-west", 3, 59, vec![])),
        traffic(vec![]),
    );
    let polls = vec![
        Poll {
            address: "127.0.0.1:1".into(),
            cluster: Some("us-east".into()),
            result: Err(
                "cannot reach http://127.0.0.1:1/dashboard/state.json: connection refused".into(),
            ),
        },
        Poll {
            address: "127.0.0.1:2".into(),
            cluster: Some("us-west".into()),
            result: Ok(west),
        },
        Poll {
            address: "127.0.0.1:3".into(),
            cluster: Some("eu-central".into()),
            result: Ok(eu),
        },
    ];
    let m = merge(&polls, SystemTime::UNIX_EPOCH);
    let c = |id: &str| m.clusters.iter().find(|c| c.view.id == id).unwrap().clone();
    assert_eq!(c("us-east").health, Health::Down);
    assert_eq!(c("us-east").control, Reach::Unreachable);
    assert_eq!(c("us-west").health, Health::Up);
    assert_eq!(c("us-west").raft_role.as_deref(), Some("leader"));
    assert_eq!(c("eu-central").raft_role.as_deref(), Some("follower"));
    assert_eq!(m.raft.leader.as_deref(), Some("us-west"));
    assert_eq!(m.raft.term, 3);
    let eu_member = m
        .raft
        .members
        .iter()
        .find(|x| x.name == "eu-central")
        .unwrap();
    assert_eq!(eu_member.lag, Some(1));
    assert_eq!(eu_member.role.as_deref(), Some("follower"));
    assert_eq!(m.sources.len(), 3);
    assert!(!m.sources[0].ok);
    assert_eq!(m.sources[1].address, "127.0.0.1:2");
    assert!(
        m.problems
            .iter()
            .any(|p| p.starts_with("us-east at 127.0.0.1:1")),
        "{:?}",
        m.problems
    );
    // Each control plane's own gateways keep their connection state.
    let gw = |cl: &str| m.gateways.iter().find(|g| g.cluster == cl).unwrap().clone();
    assert!(gw("us-west").proxies.is_some());
    assert!(gw("us-east").proxies.is_none());

    // With us-east answering, its callee-side count is dropped in favour
    // of us-west's caller-side one.
    let mut polls = polls;
    polls[0].result = Ok(east_old);
    let m = merge(&polls, SystemTime::UNIX_EPOCH);
    assert_eq!(m.traffic.edges.len(), 1, "{:?}", m.traffic.edges);
    assert_eq!(m.traffic.edges[0].rps, 10.0);
    assert_eq!(m.traffic.targets, 6);
    // The registry is us-west's (applied 60), where us-east's lease expired;
    // but us-east answers: cut off from the quorum.
    assert_eq!(c_of(&m, "us-east").health, Health::Partitioned);
}

fn c_of(m: &DashboardState, id: &str) -> ClusterState {
    m.clusters.iter().find(|c| c.view.id == id).unwrap().clone()
}

#[test]
fn nobody_answering_gives_an_empty_view_with_the_errors() {
    let m = merge(
        &[Poll {
            address: "cp:15014".into(),
            cluster: None,
            result: Err("timeout".into()),
        }],
        SystemTime::UNIX_EPOCH,
    );
    assert!(m.clusters.is_empty());
    assert_eq!(m.raft.leader, None);
    assert_eq!(
        m.problems,
        vec!["a control plane at cp:15014: timeout".to_string()]
    );
}
