//! The federation dashboard: a page (served at `/dashboard/` on the admin
//! port and by `isthmus dashboard`) that polls `/dashboard/state.json`
//! every second and shows clusters with their health and leases, the Raft
//! leader and lag, gateways, exported services with their endpoints per
//! cluster, and a graph of request rates and success per service edge.
//!
//! The document reuses the data of `isthmus status` ([`super::status_view`])
//! and the local registry replica; the traffic comes from the collector,
//! which scrapes this cluster's proxies only while a page is watching.

pub mod assets;
pub mod collect;
pub mod fetch;
pub mod merge;
pub mod promtext;
pub mod rates;
pub mod state;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use isthmus_xds::XdsServer;

use super::AdminState;
use collect::{CollectConfig, CollectorHandle};
use state::{DashboardState, TrafficState};

/// What the admin port keeps for the dashboard: the traffic collector.
#[derive(Clone)]
pub struct Dashboard {
    collector: CollectorHandle,
}

impl Dashboard {
    /// Starts the (idle until watched) collector over the proxies connected
    /// to `xds`.
    pub fn start(xds: XdsServer, config: CollectConfig) -> Dashboard {
        let port = config.proxy_admin_port;
        let collector = collect::start(move || collect::targets(&xds.status(), port), config);
        Dashboard { collector }
    }
}

/// The federation peers named in the MeshConfig, for naming Raft ids.
fn mesh_peers(state: &AdminState) -> Vec<String> {
    let config = state.config.borrow().clone();
    config
        .mesh_config()
        .and_then(|m| m.spec.federation.as_ref())
        .map(|f| f.peers.iter().map(|p| p.id.clone()).collect())
        .unwrap_or_default()
}

/// This control plane's dashboard document.
pub async fn document(state: &AdminState, traffic: &TrafficState) -> DashboardState {
    let status = super::status_view(state).await;
    let snapshot = state.federation.snapshot_stale();
    let peers = mesh_peers(state);
    state::build(state::Inputs {
        status: &status,
        snapshot: &snapshot,
        peers: &peers,
        traffic,
        now: std::time::SystemTime::now(),
    })
}

/// Answers the dashboard's paths on the admin port; `None` for any other path.
pub async fn route(
    state: &AdminState,
    dashboard: &Dashboard,
    path: &str,
) -> Option<Response<Full<Bytes>>> {
    if path == "/dashboard" {
        return Some(assets::redirect());
    }
    let rel = path.strip_prefix(assets::PREFIX)?;
    if rel == "state.json" {
        dashboard.collector.touch();
        let doc = document(state, &dashboard.collector.traffic()).await;
        return Some(assets::json(serde_json::to_vec(&doc).unwrap_or_default()));
    }
    assets::response(rel)
}
