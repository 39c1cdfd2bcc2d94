//! What the server knows about the clusters: built by the control plane from
//! its registry replica, replaced as a whole on every change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::zone::Zone;

/// One cluster as global DNS sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    pub region: String,
    /// The registry lease: false once the log marked it expired.
    pub lease_alive: bool,
    /// Addresses of the cluster's ingress gateways that are ready.
    pub ingress: Vec<IpAddr>,
}

impl ClusterHealth {
    pub(crate) fn serves(&self, want: Family) -> bool {
        self.lease_alive && self.ingress.iter().any(|ip| want.matches(ip))
    }
}

/// Every cluster by id. `stale` is set while the control plane is cut off
/// from the registry majority: answers still come from this (last) view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthView {
    pub clusters: BTreeMap<String, ClusterHealth>,
    pub stale: bool,
}

/// What one query is answered from: one consistent pair, swapped as a whole.
#[derive(Debug, Clone)]
pub struct Serving {
    pub zone: Arc<Zone>,
    pub view: Arc<HealthView>,
}

/// Which address family a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
    Any,
}

impl Family {
    pub(crate) fn matches(self, ip: &IpAddr) -> bool {
        match self {
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
            Family::Any => true,
        }
    }
}
