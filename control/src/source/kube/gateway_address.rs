//! The east-west gateway's address as other clusters reach it, discovered
//! from its LoadBalancer Service (`status.loadBalancer.ingress[]`) and
//! published as this cluster's gateway address in the federation registry.
//!
//! - `discover` watches the one Service (by name, in its namespace) and
//!   sends what its load balancer exposes: every ingress IP or hostname,
//!   with the Service's TLS passthrough port (TCP) and its QUIC ports (UDP).
//! - `publish` keeps the registry's record of this cluster in line: it
//!   rewrites only the east-west fields of whatever the registry holds (so
//!   whatever else the exporter registered stays as it is) and only when
//!   they differ, so lease renewals cost nothing.
//!
//! A hostname (AWS ELBs have no IP) is published as `host:port`; resolving
//! it is the consumer's job. Addresses set in the MeshConfig
//! (`gateways.eastWest`, `gateways.eastWestQuic`) win: an operator who
//! wrote one (a NAT in front of the balancer) meant it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use isthmus_federation::{Handle, RegistrySnapshot};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::CONTROL_NAMESPACE;

/// The Service `isthmus install` renders for the east-west gateway.
pub const DEFAULT_SERVICE: &str = "isthmus-eastwestgateway";
/// Port names Isthmus and Istio give the east-west TLS passthrough port.
const TLS_PORT_NAMES: [&str; 2] = ["tls-passthrough", "tls"];
/// The east-west port when no port has one of those names.
const EAST_WEST_PORT: i32 = 15443;

/// Which Service fronts the east-west gateway: `NAMESPACE/NAME` or `NAME`
/// (in the control plane's namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayServiceRef {
    pub namespace: String,
    pub name: String,
}

impl Default for GatewayServiceRef {
    fn default() -> Self {
        Self {
            namespace: CONTROL_NAMESPACE.to_string(),
            name: DEFAULT_SERVICE.to_string(),
        }
    }
}

impl std::str::FromStr for GatewayServiceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name) = match s.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (CONTROL_NAMESPACE, s),
        };
        let label = |v: &str| {
            !v.is_empty()
                && v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !label(namespace) || !label(name) {
            return Err(format!(
                "`{s}`: expected NAMESPACE/NAME or NAME of a Service (lowercase DNS labels)"
            ));
        }
        Ok(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for GatewayServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the load balancer exposes, as the registry stores addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayAddress {
    /// `host:port` of the mTLS passthrough (TCP).
    pub tcp: Vec<String>,
    /// `host:port` of the QUIC tunnel (UDP).
    pub quic: Vec<String>,
}

impl GatewayAddress {
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.quic.is_empty()
    }
}

fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The addresses a Service's load balancer exposes; empty while it has
/// none (a balancer still provisioning) or for a Service of another type.
pub fn addresses_of(service: &Service) -> GatewayAddress {
    let hosts: Vec<String> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i.ip.clone()
                .filter(|ip| !ip.is_empty())
                .or_else(|| i.hostname.clone().filter(|h| !h.is_empty()))
        })
        .collect();
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".into())
    };
    let tcp_ports: Vec<i32> = ports
        .iter()
        .filter(|p| protocol(p) == "TCP")
        .filter(|p| {
            p.name
                .as_deref()
                .is_some_and(|n| TLS_PORT_NAMES.contains(&n))
                || p.port == EAST_WEST_PORT
        })
        .map(|p| p.port)
        .collect();
    let udp_ports: Vec<i32> = ports
        .iter()
        .filter(|p| protocol(p) == "UDP")
        .map(|p| p.port)
        .collect();
    let each = |ports: &[i32]| {
        hosts
            .iter()
            .flat_map(|h| ports.iter().map(move |p| host_port(h, *p)))
            .collect::<Vec<_>>()
    };
    GatewayAddress {
        tcp: each(&tcp_ports),
        quic: each(&udp_ports),
    }
}

/// Watches `service` and sends its load balancer's addresses whenever they
/// change (empty while it has none or does not exist). Runs until `tx`
/// has no receivers.
pub async fn discover(
    client: Client,
    service: GatewayServiceRef,
    tx: watch::Sender<GatewayAddress>,
) {
    let api: Api<Service> = Api::namespaced(client, &service.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", service.name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed = false;
    loop {
        let next = tokio::select! {
            event = events.next() => event,
            () = tx.closed() => return,
        };
        let address = match next {
            Some(Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))) => {
                listed = true;
                addresses_of(&s)
            }
            Some(Ok(watcher::Event::Delete(_))) => GatewayAddress::default(),
            Some(Ok(watcher::Event::Init)) => {
                listed = false;
                continue;
            }
            // A (re)list that did not find the Service: it is gone.
            Some(Ok(watcher::Event::InitDone)) if !listed => GatewayAddress::default(),
            Some(Ok(watcher::Event::InitDone)) => continue,
            Some(Err(e)) => {
                warn!(service = %service, error = %e, "watching the east-west gateway Service failed; retrying with backoff (check RBAC: get/list/watch services)");
                continue;
            }
            None => return,
        };
        tx.send_if_modified(|current| {
            if *current == address {
                false
            } else {
                info!(service = %service, tcp = ?address.tcp, quic = ?address.quic, "east-west gateway load balancer address changed");
                *current = address;
                true
            }
        });
    }
}

/// Which registry fields the MeshConfig already sets (and discovery must
/// leave alone).
#[derive(Debug, Clone, Copy, Default)]
pub struct Configured {
    pub tcp: bool,
    pub quic: bool,
}

/// Keeps this cluster's registry record carrying the discovered address,
/// until either input closes. Discovery never removes an address: while the
/// balancer has none (provisioning, a Service recreated), the last one
/// published stays, since peers can do nothing better with an empty list.
pub async fn publish(
    handle: Handle,
    cluster_id: String,
    configured: Configured,
    mut discovered: watch::Receiver<GatewayAddress>,
) {
    let mut registry: watch::Receiver<Arc<RegistrySnapshot>> = handle.watch_snapshot();
    loop {
        let address = discovered.borrow_and_update().clone();
        let current = registry
            .borrow_and_update()
            .clusters
            .get(&cluster_id)
            .cloned();
        // Until the exporter registered the cluster, there is nothing to amend.
        if let (false, Some(current)) = (address.is_empty(), current) {
            let mut next = current.clone();
            if !configured.tcp && !address.tcp.is_empty() {
                next.eastwest_tcp = address.tcp.clone();
            }
            if !configured.quic && !address.quic.is_empty() {
                next.eastwest_quic = address.quic.clone();
            }
            if next != current {
                match handle.register_cluster(next).await {
                    Ok(rev) => info!(
                        cluster = %cluster_id,
                        revision = rev,
                        tcp = ?address.tcp,
                        quic = ?address.quic,
                        "published the east-west gateway's load balancer address"
                    ),
                    Err(e) => {
                        warn!(error = %e, "cannot publish the east-west gateway address yet; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            r = registry.changed() => if r.is_err() { return },
            r = discovered.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ingress: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "isthmus-eastwestgateway", "namespace": "istio-system"},
            "spec": {"type": "LoadBalancer", "ports": [
                {"name": "status-port", "port": 15021, "protocol": "TCP"},
                {"name": "tls-passthrough", "port": 15443, "protocol": "TCP"},
                {"name": "quic-tunnel", "port": 15443, "protocol": "UDP"}
            ]},
            "status": {"loadBalancer": {"ingress": ingress}}
        }))
        .unwrap()
    }

    #[test]
    fn ips_and_hostnames_with_the_passthrough_and_quic_ports() {
        let a = addresses_of(&service(json!([
            {"ip": "203.0.113.7"},
            {"hostname": "a1b2.elb.eu-west-1.amazonaws.com"},
            {"ip": "2001:db8::1"}
        ])));
        assert_eq!(
            a.tcp,
            vec![
                "203.0.113.7:15443",
                "a1b2.elb.eu-west-1.amazonaws.com:15443",
                "[2001:db8::1]:15443"
            ]
        );
        assert_eq!(a.quic.len(), 3);
        assert_eq!(a.quic[0], "203.0.113.7:15443");
    }

    #[test]
    fn no_ingress_yet_is_empty() {
        assert!(addresses_of(&service(json!([]))).is_empty());
        assert!(addresses_of(&service(json!(null))).is_empty());
    }

    #[test]
    fn service_refs_parse_with_the_control_namespace_by_default() {
        let r: GatewayServiceRef = "gw".parse().unwrap();
        assert_eq!(r.namespace, CONTROL_NAMESPACE);
        let r: GatewayServiceRef = "mesh/east-west".parse().unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("mesh", "east-west")
        );
        assert!("a/b/c".parse::<GatewayServiceRef>().is_err());
        assert!("".parse::<GatewayServiceRef>().is_err());
    }
}
