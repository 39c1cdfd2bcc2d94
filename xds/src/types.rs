//! The resource types this server speaks, and their push order.

use std::fmt;

use serde::Serialize;

/// An xDS resource type served by this crate.
///
/// The declaration order is the order in which a push sends types on an ADS
/// stream (CDS, EDS, LDS, RDS, SDS), following Envoy's "make before break"
/// guidance: clusters before their endpoints, listeners before their routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TypeUrl {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
    Secret,
    /// Istio's NDS name table for sidecar DNS proxies
    /// (`istio.networking.nds.v1.NameTable`).
    NameTable,
}

impl TypeUrl {
    /// All types, in push order.
    pub const ALL: [TypeUrl; 6] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
        TypeUrl::RouteConfiguration,
        TypeUrl::Secret,
        TypeUrl::NameTable,
    ];

    /// Position in [`TypeUrl::ALL`], for per-type arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The `type.googleapis.com/...` URL carried in requests and responses.
    pub const fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
            TypeUrl::NameTable => "type.googleapis.com/istio.networking.nds.v1.NameTable",
        }
    }

    /// Parses a type URL; `None` for types this server does not serve.
    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// Short name used in metrics labels and logs (`cds`, `eds`, ...).
    pub const fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::ClusterLoadAssignment => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::RouteConfiguration => "rds",
            TypeUrl::Secret => "sds",
            TypeUrl::NameTable => "nds",
        }
    }

    /// In state-of-the-world, a response for these types carries the complete
    /// set: a resource missing from it is deleted by the client. For the other
    /// types a response may carry only the resources that changed.
    pub const fn is_full_state(self) -> bool {
        matches!(
            self,
            TypeUrl::Cluster | TypeUrl::Listener | TypeUrl::NameTable
        )
    }
}

impl fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use prost::Name;

    #[test]
    fn urls_match_generated_message_names() {
        assert_eq!(TypeUrl::Cluster.as_str(), Cluster::type_url());
        assert_eq!(
            TypeUrl::ClusterLoadAssignment.as_str(),
            ClusterLoadAssignment::type_url()
        );
        assert_eq!(TypeUrl::Listener.as_str(), Listener::type_url());
        assert_eq!(
            TypeUrl::RouteConfiguration.as_str(),
            RouteConfiguration::type_url()
        );
        assert_eq!(TypeUrl::Secret.as_str(), Secret::type_url());
    }

    #[test]
    fn parse_round_trips_and_rejects_unknown() {
        for t in TypeUrl::ALL {
            assert_eq!(TypeUrl::parse(t.as_str()), Some(t));
        }
        assert_eq!(TypeUrl::parse("type.googleapis.com/foo.Bar"), None);
    }

    #[test]
    fn index_is_position_in_all() {
        for (i, t) in TypeUrl::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }
}
