//! HTTP through real gateways and real hyper servers: canary weights, header
//! matches, fault injection, circuit breaking, retries across hosts and
//! priorities, malformed requests, and WebSocket upgrades.
//!
//! One test target split by behaviour: `routing` (route matching, weights
//! and live RDS updates), `resilience` (fault injection, circuit breaking,
//! outlier detection), `retries` (retry policies across hosts, priorities
//! and streams) and `connections` (downstream HTTP/1.1 handling and the
//! upstream connection pool). The helpers shared by them live here.

#[path = "../support/mod.rs"]
mod support;

mod connections;
mod resilience;
mod retries;
mod routing;

use envoy_types::pb::google::protobuf::UInt32Value;
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// RDS route `80`: every host and path to `action`.
fn route_all(ads: &ScriptedAds, action: envoy_types::pb::envoy::config::route::v3::RouteAction) {
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![prefix_route("all", "/", action)],
        )],
    );
}

/// Cluster `app` (as given) with one endpoint at `app`, and RDS route `80`
/// sending every path to it.
fn route_all_to_app(
    ads: &ScriptedAds,
    cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster,
    app: std::net::SocketAddr,
) {
    ads.set(CDS, vec![named("app", cluster)]);
    ads.set(EDS, vec![named("app", cla("app", &[(0, &[app])]))]);
    route_all(ads, to_cluster("app"));
}

/// A gateway with one HTTP listener on RDS route `routes`; returns it and the listener address.
async fn http_gateway(ads: &ScriptedAds) -> (isthmus_gateway::Gateway, std::net::SocketAddr) {
    ads.set(
        LDS,
        vec![named("http", http_listener("http", any_port(), rds("80")))],
    );
    let gw = gateway(ads, "sidecar", None).await;
    assert!(
        gw.wait_ready(WAIT).await,
        "gateway never became ready (RDS included)"
    );
    let at = gw.listener_address("http").expect("bound");
    (gw, at)
}
