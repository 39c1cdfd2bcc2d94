//! Proxy identity: the xDS node id and metadata, parsed once per stream.
//!
//! Node ids follow Istio's `TYPE~IP~POD.NS~NS.svc.cluster.local`; metadata keys
//! are the ones listed in docs/architecture.md (Proxy identity).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use serde::Serialize;

/// Why a node was refused. Sent back to the client as `InvalidArgument`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("the first discovery request on a stream carries no `node`; configure the proxy's bootstrap with a node id")]
    MissingNode,
    #[error("node id {id:?} is not Istio's TYPE~IP~POD.NS~NS.svc.cluster.local form: {reason}")]
    MalformedId { id: String, reason: String },
    #[error("node id {id:?}: proxy type {found:?} is neither `sidecar` nor `router`")]
    UnknownType { id: String, found: String },
    #[error("node {id:?}: metadata key {key} must be {expected}")]
    BadMetadata {
        id: String,
        key: &'static str,
        expected: &'static str,
    },
    #[error("node {id:?}: metadata ISTHMUS_ROLE {role:?} is not one of sidecar, ingress, egress, east-west")]
    UnknownRole { id: String, role: String },
    #[error("node {id:?}: ISTHMUS_ROLE {role} does not match node type {node_type} (sidecars use `sidecar~`, gateways `router~`)")]
    RoleMismatch {
        id: String,
        role: ProxyRole,
        node_type: NodeType,
    },
}

/// The TYPE field of the node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeType {
    Sidecar,
    Router,
}

impl std::fmt::Display for NodeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        })
    }
}

/// What the proxy does in the mesh; drives translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyRole {
    Sidecar,
    Ingress,
    Egress,
    EastWest,
}

impl ProxyRole {
    fn parse(s: &str) -> Option<ProxyRole> {
        match s {
            "sidecar" => Some(ProxyRole::Sidecar),
            "ingress" => Some(ProxyRole::Ingress),
            "egress" => Some(ProxyRole::Egress),
            "east-west" | "eastwest" => Some(ProxyRole::EastWest),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProxyRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyRole::Sidecar => "sidecar",
            ProxyRole::Ingress => "ingress",
            ProxyRole::Egress => "egress",
            ProxyRole::EastWest => "east-west",
        })
    }
}

/// `node.locality`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// A connected proxy's identity and the metadata that shapes its config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proxy {
    /// The node id exactly as sent.
    pub node_id: String,
    pub node_type: NodeType,
    pub ip: IpAddr,
    /// The POD part of `POD.NS` (the whole ID field when it has no dot).
    pub name: String,
    pub namespace: String,
    /// The DNS domain field (`NS.svc.cluster.local`).
    pub dns_domain: String,
    pub role: ProxyRole,
    pub cluster_id: Option<String>,
    pub network: Option<String>,
    pub service_account: Option<String>,
    pub istio_version: Option<String>,
    /// `INTERCEPTION_MODE`; `None` when absent.
    pub interception_mode: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    /// `ISTHMUS_OUTBOUND_BIND`, default `127.0.0.1`.
    pub outbound_bind: IpAddr,
    /// `ISTHMUS_APP_ADDRESS`, default `127.0.0.1`.
    pub app_address: IpAddr,
    /// Istio's `GENERATOR` metadata: which config flavour the client takes
    /// (`grpc` for proxyless gRPC); `None` for Envoy-compatible proxies.
    pub generator: Option<String>,
}

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl Proxy {
    /// Parses the node of the first request on a stream.
    pub fn from_node(node: Option<&Node>) -> Result<Proxy, ProxyError> {
        let node = node.ok_or(ProxyError::MissingNode)?;
        let id = node.id.as_str();
        let malformed = |reason: &str| ProxyError::MalformedId {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let parts: Vec<&str> = id.split('~').collect();
        if parts.len() != 4 {
            return Err(malformed(&format!(
                "expected 4 fields separated by `~`, found {}",
                parts.len()
            )));
        }
        let node_type = match parts[0] {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => {
                return Err(ProxyError::UnknownType {
                    id: id.to_owned(),
                    found: other.to_owned(),
                })
            }
        };
        let ip: IpAddr = parts[1]
            .parse()
            .map_err(|_| malformed(&format!("IP field {:?} is not an IP address", parts[1])))?;
        if parts[2].is_empty() {
            return Err(malformed("the POD.NS field is empty"));
        }
        let (name, id_namespace) = match parts[2].split_once('.') {
            Some((pod, ns)) if !pod.is_empty() && !ns.is_empty() => (pod, Some(ns)),
            Some(_) => return Err(malformed("the POD.NS field has an empty pod or namespace")),
            None => (parts[2], None),
        };
        let dns_domain = parts[3].to_owned();

        let empty = Struct::default();
        let meta = MetaReader {
            id,
            fields: node.metadata.as_ref().unwrap_or(&empty),
        };
        let namespace = match meta.string("NAMESPACE")? {
            Some(ns) => ns,
            None => id_namespace
                .map(str::to_owned)
                .or_else(|| dns_domain.split('.').next().map(str::to_owned))
                .filter(|ns| !ns.is_empty())
                .ok_or_else(|| malformed("no namespace in POD.NS, DNS domain or NAMESPACE"))?,
        };
        let labels = meta.labels("LABELS")?;
        let role = match meta.string("ISTHMUS_ROLE")? {
            Some(r) => ProxyRole::parse(&r).ok_or(ProxyError::UnknownRole {
                id: id.to_owned(),
                role: r,
            })?,
            None => derive_role(node_type, &labels),
        };
        let role_fits = match node_type {
            NodeType::Sidecar => role == ProxyRole::Sidecar,
            NodeType::Router => role != ProxyRole::Sidecar,
        };
        if !role_fits {
            return Err(ProxyError::RoleMismatch {
                id: id.to_owned(),
                role,
                node_type,
            });
        }
        let locality = node
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            })
            .unwrap_or_default();
        Ok(Proxy {
            node_id: id.to_owned(),
            node_type,
            ip,
            name: name.to_owned(),
            namespace,
            dns_domain,
            role,
            cluster_id: meta.string("CLUSTER_ID")?,
            network: meta.string("NETWORK")?,
            service_account: meta.string("SERVICE_ACCOUNT")?,
            istio_version: meta.string("ISTIO_VERSION")?,
            interception_mode: meta.string("INTERCEPTION_MODE")?,
            labels,
            locality,
            outbound_bind: meta.ip("ISTHMUS_OUTBOUND_BIND")?.unwrap_or(LOOPBACK),
            app_address: meta.ip("ISTHMUS_APP_ADDRESS")?.unwrap_or(LOOPBACK),
            generator: meta.string("GENERATOR")?,
        })
    }

    /// A key for everything that can change this proxy's generated config
    /// except its instance name: proxies with equal keys share generated
    /// resources. It includes the IP, since a non-capturing sidecar's inbound
    /// listeners bind it; a generator whose output ignores the IP can offer a
    /// coarser key through [`crate::Generator::shape`].
    pub fn shape_key(&self) -> u64 {
        self.shape_key_with(true)
    }

    /// [`Proxy::shape_key`] without the IP (and the per-instance bind
    /// addresses): for resource types whose generation never reads them, so
    /// every replica of a workload shares one computation.
    pub fn shape_key_except_address(&self) -> u64 {
        self.shape_key_with(false)
    }

    fn shape_key_with(&self, addresses: bool) -> u64 {
        // DefaultHasher::new() has fixed keys: the key is stable within a
        // process, which is all the shared cache needs.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        addresses.hash(&mut h);
        if addresses {
            self.ip.hash(&mut h);
            self.outbound_bind.hash(&mut h);
            self.app_address.hash(&mut h);
        }
        self.node_type.hash(&mut h);
        self.namespace.hash(&mut h);
        self.dns_domain.hash(&mut h);
        self.role.hash(&mut h);
        self.cluster_id.hash(&mut h);
        self.network.hash(&mut h);
        self.service_account.hash(&mut h);
        self.istio_version.hash(&mut h);
        self.interception_mode.hash(&mut h);
        self.labels.hash(&mut h);
        self.locality.hash(&mut h);
        self.generator.hash(&mut h);
        h.finish()
    }
}

/// Gateways that do not say what they are: recognise Istio's usual `istio`
/// label values, and treat anything else as an ingress gateway.
fn derive_role(node_type: NodeType, labels: &BTreeMap<String, String>) -> ProxyRole {
    if node_type == NodeType::Sidecar {
        return ProxyRole::Sidecar;
    }
    match labels.get("istio").map(String::as_str) {
        Some("eastwestgateway") => ProxyRole::EastWest,
        Some("egressgateway") => ProxyRole::Egress,
        _ => ProxyRole::Ingress,
    }
}

struct MetaReader<'a> {
    id: &'a str,
    fields: &'a Struct,
}

impl MetaReader<'_> {
    fn bad(&self, key: &'static str, expected: &'static str) -> ProxyError {
        ProxyError::BadMetadata {
            id: self.id.to_owned(),
            key,
            expected,
        }
    }

    fn get(&self, key: &str) -> Option<&Kind> {
        match self.fields.fields.get(key) {
            Some(Value {
                kind: Some(Kind::NullValue(_)),
            })
            | None => None,
            Some(Value { kind }) => kind.as_ref(),
        }
    }

    /// A string value; empty strings count as absent (Istio's agents send them).
    fn string(&self, key: &'static str) -> Result<Option<String>, ProxyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
            Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }

    fn ip(&self, key: &'static str) -> Result<Option<IpAddr>, ProxyError> {
        self.string(key)?
            .map(|s| s.parse().map_err(|_| self.bad(key, "an IP address")))
            .transpose()
    }

    fn labels(&self, key: &'static str) -> Result<BTreeMap<String, String>, ProxyError> {
        match self.get(key) {
            None => Ok(BTreeMap::new()),
            Some(Kind::StructValue(s)) => s
                .fields
                .iter()
                .map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Ok((k.clone(), s.clone())),
                    _ => Err(self.bad(key, "a struct of string values")),
                })
                .collect(),
            Some(_) => Err(self.bad(key, "a struct of string values")),
        }
    }
}

#[cfg(test)]
mod tests;
