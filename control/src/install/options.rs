//! What `isthmus install` renders for: one cluster's identity in the mesh,
//! checked before anything is rendered so a typo never reaches a cluster.

use crate::config::{Federation, FederationPeer, Locality, MeshConfigSpec, MeshGateways};

use super::join::JoinTicket;
use super::InstallError;

/// The federation's QUIC port (docs/architecture.md).
pub const FEDERATION_PORT: u16 = 15031;

/// One cluster's install parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOptions {
    pub cluster_id: String,
    pub network: String,
    pub locality: Locality,
    pub trust_domain: String,
    /// The one image that runs every role.
    pub image: String,
    /// Federation members this cluster joins (from `--join`).
    pub join: Option<JoinTicket>,
    /// The `--join` token as given (either format `isthmus control
    /// --join-token-file` reads): the `isthmus-join` Secret's `token`.
    pub join_token: Option<String>,
    /// `HOST:PORT` the other members reach this cluster's federation node
    /// at (`isthmus control --federation-advertise`); needed to join, since
    /// the node listens on 0.0.0.0.
    pub federation_advertise: Option<String>,
    /// Render Istio's CRDs (minimal structural schemas); off for clusters
    /// that already run Istio's own.
    pub istio_crds: bool,
    /// Render the MCS API CRDs (ServiceExport, ServiceImport).
    pub mcs_crds: bool,
    /// Render a prometheus-operator ServiceMonitor and PodMonitor.
    pub service_monitor: bool,
    /// Replicas of each gateway Deployment.
    pub gateway_replicas: i32,
    /// `host:port` of the east-west gateway as the other clusters reach it
    /// (its LoadBalancer address): published in the registry, so other
    /// networks can route here.
    pub east_west_address: Option<String>,
}

/// The image tag matching this build.
pub fn default_image() -> String {
    format!("ghcr.io/isthmus-mesh/isthmus:{}", env!("CARGO_PKG_VERSION"))
}

impl InstallOptions {
    /// Checks every value; `locality` is Istio's `region/zone[/subzone]`.
    pub fn new(
        cluster_id: &str,
        network: &str,
        locality: &str,
        trust_domain: &str,
    ) -> Result<Self, InstallError> {
        check_dns_label("--cluster", cluster_id)?;
        check_label_value("--network", network)?;
        isthmus_identity::spiffe::validate_trust_domain(trust_domain).map_err(|e| {
            InstallError::Invalid {
                flag: "--trust-domain",
                value: trust_domain.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            cluster_id: cluster_id.to_string(),
            network: network.to_string(),
            locality: parse_locality(locality)?,
            trust_domain: trust_domain.to_string(),
            image: default_image(),
            join: None,
            join_token: None,
            federation_advertise: None,
            istio_crds: true,
            mcs_crds: true,
            service_monitor: false,
            gateway_replicas: 2,
            east_west_address: None,
        })
    }

    /// Adds the federation this cluster joins; the ticket must be of the
    /// same trust domain and must not list this cluster.
    pub fn with_join(mut self, ticket: JoinTicket) -> Result<Self, InstallError> {
        if ticket.trust_domain != self.trust_domain {
            return Err(InstallError::Invalid {
                flag: "--join",
                value: ticket.encode(),
                reason: format!(
                    "the token is for trust domain {:?}, this install is for {:?}",
                    ticket.trust_domain, self.trust_domain
                ),
            });
        }
        if ticket.peers.iter().any(|p| p.id == self.cluster_id) {
            return Err(InstallError::Invalid {
                flag: "--join",
                value: ticket.encode(),
                reason: format!(
                    "the token already lists cluster {:?}; cluster ids must be unique in the federation",
                    self.cluster_id
                ),
            });
        }
        self.join = Some(ticket);
        Ok(self)
    }

    /// `--join TOKEN`: a token of `isthmus federation token create` or of
    /// `isthmus install join-token`. Its seeds become the MeshConfig's
    /// peers; the token itself is rendered as the `isthmus-join` Secret the
    /// control plane reads with `--join-token-file`.
    pub fn with_join_token(self, token: &str) -> Result<Self, InstallError> {
        let token = token.trim();
        let decoded = crate::app::federation::token::JoinToken::decode(token).map_err(|e| {
            InstallError::Invalid {
                flag: "--join",
                value: token.to_string(),
                reason: e.to_string(),
            }
        })?;
        let ticket = JoinTicket {
            trust_domain: decoded.trust_domain,
            peers: decoded
                .seeds
                .into_iter()
                .map(|s| super::join::TicketPeer {
                    id: s.id,
                    address: s.address,
                })
                .collect(),
        };
        let mut out = self.with_join(ticket)?;
        out.join_token = Some(token.to_string());
        Ok(out)
    }

    /// Sets where other members reach this cluster's federation node.
    pub fn with_federation_advertise(mut self, address: &str) -> Result<Self, InstallError> {
        let ok = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(invalid(
                "--federation-advertise",
                address,
                "expected HOST:PORT",
            ));
        }
        self.federation_advertise = Some(address.to_string());
        Ok(self)
    }

    /// A joining cluster must say where the others reach it.
    pub fn check_join(&self) -> Result<(), InstallError> {
        if let (Some(token), None) = (&self.join_token, &self.federation_advertise) {
            return Err(InstallError::Invalid {
                flag: "--join",
                value: token.clone(),
                reason: "a joining cluster needs --federation-advertise HOST:PORT (the address of its isthmus-federation Service that the other clusters reach, port 15031/UDP)".into(),
            });
        }
        Ok(())
    }

    /// Sets where other clusters reach the east-west gateway.
    pub fn with_east_west_address(mut self, address: &str) -> Result<Self, InstallError> {
        let ok = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(invalid(
                "--east-west-address",
                address,
                "expected HOST:PORT",
            ));
        }
        self.east_west_address = Some(address.to_string());
        Ok(self)
    }

    /// This cluster's MeshConfig: what the control plane reads at start-up.
    pub fn mesh_config(&self) -> MeshConfigSpec {
        let peers = self
            .join
            .as_ref()
            .map(|t| {
                t.peers
                    .iter()
                    .map(|p| FederationPeer {
                        id: p.id.clone(),
                        address: p.address.clone(),
                        transport: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        MeshConfigSpec {
            cluster_id: self.cluster_id.clone(),
            network: Some(self.network.clone()),
            locality: Some(self.locality.clone()),
            trust_domain: Some(self.trust_domain.clone()),
            federation: Some(Federation {
                listen: Some(format!("0.0.0.0:{FEDERATION_PORT}")),
                peers,
            }),
            gateways: self.east_west_address.as_ref().map(|a| MeshGateways {
                east_west: Some(a.clone()),
                east_west_quic: Some(a.clone()),
                ingress: Vec::new(),
            }),
            ..MeshConfigSpec::default()
        }
    }
}

fn invalid(flag: &'static str, value: &str, reason: &str) -> InstallError {
    InstallError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// RFC 1123 label: it names objects and the intermediate CA.
pub(crate) fn check_dns_label(flag: &'static str, value: &str) -> Result<(), InstallError> {
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if value.is_empty() || value.len() > 63 || !ok_chars {
        return Err(invalid(
            flag,
            value,
            "must be 1-63 lower-case letters, digits or '-' (a DNS label)",
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(invalid(flag, value, "must not start or end with '-'"));
    }
    Ok(())
}

/// Values end up in labels (`topology.istio.io/network`) and arguments.
fn check_label_value(flag: &'static str, value: &str) -> Result<(), InstallError> {
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = value
        .bytes()
        .next()
        .zip(value.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if value.is_empty() || value.len() > 63 || !ok_chars || !ends_ok {
        return Err(invalid(
            flag,
            value,
            "must be 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric (a Kubernetes label value)",
        ));
    }
    Ok(())
}

/// `region/zone[/subzone]`, each part a label value.
pub fn parse_locality(value: &str) -> Result<Locality, InstallError> {
    let parts: Vec<&str> = value.split('/').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(invalid(
            "--locality",
            value,
            "expected region/zone or region/zone/subzone",
        ));
    }
    for p in &parts {
        check_label_value("--locality", p)?;
    }
    Ok(Locality {
        region: Some(parts[0].to_string()),
        zone: Some(parts[1].to_string()),
        subzone: parts.get(2).map(|s| s.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_values_naming_the_flag() {
        let e = InstallOptions::new("East_1", "n", "r/z", "example.org").unwrap_err();
        assert!(e.to_string().contains("--cluster"), "{e}");
        let e = InstallOptions::new("east", "n", "r", "example.org").unwrap_err();
        assert!(e.to_string().contains("--locality"), "{e}");
        let e = InstallOptions::new("east", "n", "r/z", "Bad Domain").unwrap_err();
        assert!(e.to_string().contains("--trust-domain"), "{e}");
        let e = InstallOptions::new("east", "-n", "r/z", "example.org").unwrap_err();
        assert!(e.to_string().contains("--network"), "{e}");
    }

    #[test]
    fn locality_keeps_the_subzone() {
        let l = parse_locality("eu-west/eu-west-1a/rack-4").unwrap();
        assert_eq!(l.to_istio_string(), "eu-west/eu-west-1a/rack-4");
        assert_eq!(parse_locality("r/z").unwrap().subzone, None);
    }

    #[test]
    fn join_ticket_must_match_trust_domain_and_not_list_us() {
        let opts = InstallOptions::new("east", "n1", "r/z", "example.org").unwrap();
        let other = JoinTicket::new("other.org", vec![("west", "west.example.org:15031")]).unwrap();
        assert!(opts.clone().with_join(other).is_err());
        let dup = JoinTicket::new("example.org", vec![("east", "x:15031")]).unwrap();
        assert!(opts.clone().with_join(dup).is_err());
        let ok = JoinTicket::new("example.org", vec![("west", "west.example.org:15031")]).unwrap();
        let mesh = opts.with_join(ok).unwrap().mesh_config();
        let fed = mesh.federation.unwrap();
        assert_eq!(fed.peers[0].id, "west");
        assert_eq!(fed.listen.as_deref(), Some("0.0.0.0:15031"));
    }
}
