//! One federation view from several control planes' dashboard documents
//! (`isthmus dashboard --control A --control B ...`).
//!
//! The registry is replicated, so its parts (clusters, leases, services,
//! advertised gateways) come from the freshest replica that answered.
//! What only a cluster's own control plane knows (its connected gateways,
//! its proxies' traffic, its Raft role) comes from that control plane. A
//! control plane that does not answer makes its cluster `unreachable`, or
//! `down` once the survivors expire its lease.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::state::{
    combine_edges, health, now_ms, raft_state, DashboardState, Reach, SourceState, TrafficState,
};

/// The latest poll of one control plane.
#[derive(Debug, Clone)]
pub struct Poll {
    /// Where it is polled (as given to `--control`).
    pub address: String,
    /// Its cluster, as last answered (kept while it does not answer).
    pub cluster: Option<String>,
    pub result: Result<DashboardState, String>,
}

pub fn merge(polls: &[Poll], now: SystemTime) -> DashboardState {
    let mut sources: Vec<SourceState> = Vec::new();
    let mut problems = Vec::new();
    for p in polls {
        match &p.result {
            Ok(state) => {
                for s in &state.sources {
                    let mut s = s.clone();
                    if s.address.is_empty() {
                        s.address = p.address.clone();
                    }
                    sources.push(s);
                }
                problems.extend(state.problems.iter().cloned());
            }
            Err(e) => {
                let who = p.cluster.as_deref().unwrap_or("a control plane");
                problems.push(format!("{who} at {}: {e}", p.address));
                sources.push(SourceState {
                    cluster: p.cluster.clone().unwrap_or_default(),
                    address: p.address.clone(),
                    ok: false,
                    error: Some(e.clone()),
                    ..SourceState::default()
                });
            }
        }
    }
    let answered: Vec<&DashboardState> = polls
        .iter()
        .filter_map(|p| p.result.as_ref().ok())
        .collect();
    let freshest = answered.iter().copied().max_by_key(|s| {
        s.sources
            .iter()
            .map(|x| (x.applied_index, x.registry_revision))
            .max()
            .unwrap_or_default()
    });

    let reach = |cluster: &str| {
        let mine: Vec<&SourceState> = sources.iter().filter(|s| s.cluster == cluster).collect();
        if mine.iter().any(|s| s.ok) {
            Reach::Reachable
        } else if mine.is_empty() {
            Reach::Unknown
        } else {
            Reach::Unreachable
        }
    };
    let mut clusters = freshest.map(|s| s.clusters.clone()).unwrap_or_default();
    for c in clusters.iter_mut() {
        c.control = reach(&c.view.id);
        c.health = health(&c.view.lease, c.control);
        c.raft_role = sources
            .iter()
            .filter(|s| s.ok && s.cluster == c.view.id)
            .find_map(|s| s.federation.as_ref().map(|f| f.role.clone()));
    }

    // Gateways: each control plane's knowledge of its own first.
    let mut gateways: Vec<_> = answered
        .iter()
        .flat_map(|s| s.gateways.iter().filter(|g| g.proxies.is_some()).cloned())
        .collect();
    let known: BTreeSet<(String, String)> = gateways
        .iter()
        .map(|g| (g.cluster.clone(), g.role.clone()))
        .collect();
    if let Some(f) = freshest {
        gateways.extend(
            f.gateways
                .iter()
                .filter(|g| !known.contains(&(g.cluster.clone(), g.role.clone())))
                .cloned()
                .map(|mut g| {
                    g.proxies = None;
                    g
                }),
        );
    }
    gateways.sort_by(|a, b| (&a.cluster, &a.role).cmp(&(&b.cluster, &b.role)));

    let traffic = TrafficState {
        collected_at_ms: answered
            .iter()
            .map(|s| s.traffic.collected_at_ms)
            .max()
            .unwrap_or(0),
        window_secs: answered
            .iter()
            .filter_map(|s| s.traffic.window_secs)
            .reduce(f64::max),
        targets: answered.iter().map(|s| s.traffic.targets).sum(),
        scraped: answered.iter().map(|s| s.traffic.scraped).sum(),
        edges: combine_edges(
            answered
                .iter()
                .flat_map(|s| s.traffic.edges.iter().cloned()),
        ),
        errors: answered
            .iter()
            .flat_map(|s| s.traffic.errors.iter().cloned())
            .collect(),
    };
    DashboardState {
        generated_at_ms: now_ms(now),
        raft: raft_state(&sources),
        sources,
        clusters,
        gateways,
        services: freshest.map(|s| s.services.clone()).unwrap_or_default(),
        traffic,
        problems,
    }
}
