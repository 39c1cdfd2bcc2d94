//! `--join TOKEN`: what a new cluster needs to know about the federation it
//! joins (trust domain and the members' federation addresses), as one string
//! an operator can pass along. It carries no secret: membership itself is
//! authenticated by the trust domain (the joining control plane's
//! intermediate is signed by the shared root), and the leader still has to
//! add the new member (docs/federation.md, "Add a member").

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::options::check_dns_label;
use super::InstallError;

const PREFIX: &str = "isthmus-join-v1.";

/// The Secret holding the token a joining cluster was installed with, and
/// where the control plane finds it (`--join-token-file`).
pub const JOIN_SECRET: &str = "isthmus-join";
pub const JOIN_TOKEN_KEY: &str = "token";
pub const JOIN_TOKEN_DIR: &str = "/var/run/secrets/isthmus/join";

/// `JOIN_TOKEN_DIR/JOIN_TOKEN_KEY`.
pub fn join_token_file() -> String {
    format!("{JOIN_TOKEN_DIR}/{JOIN_TOKEN_KEY}")
}

/// The `isthmus-join` Secret. A Secret rather than a ConfigMap although the
/// token holds no key: it names the federation's members and addresses,
/// which is nobody else's business, and RBAC on Secrets is tighter.
pub fn secret(token: &str) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: super::k8s::meta(
            JOIN_SECRET,
            Some(crate::app::CONTROL_NAMESPACE),
            &[("app", "isthmus-control")],
        ),
        type_: Some("Opaque".into()),
        string_data: Some(std::collections::BTreeMap::from([(
            JOIN_TOKEN_KEY.to_string(),
            token.to_string(),
        )])),
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinTicket {
    pub trust_domain: String,
    pub peers: Vec<TicketPeer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketPeer {
    /// The member's cluster id (or witness name).
    pub id: String,
    /// `host:port` of its federation listener (UDP, QUIC).
    pub address: String,
}

impl JoinTicket {
    pub fn new(trust_domain: &str, peers: Vec<(&str, &str)>) -> Result<Self, InstallError> {
        let ticket = Self {
            trust_domain: trust_domain.to_string(),
            peers: peers
                .into_iter()
                .map(|(id, address)| TicketPeer {
                    id: id.to_string(),
                    address: address.to_string(),
                })
                .collect(),
        };
        ticket.check()?;
        Ok(ticket)
    }

    /// Parses `ID=HOST:PORT` peer arguments.
    pub fn from_peer_args(trust_domain: &str, peers: &[String]) -> Result<Self, InstallError> {
        let mut pairs = Vec::with_capacity(peers.len());
        for p in peers {
            let (id, address) = p.split_once('=').ok_or_else(|| InstallError::Invalid {
                flag: "--peer",
                value: p.clone(),
                reason: "expected ID=HOST:PORT".into(),
            })?;
            pairs.push((id, address));
        }
        Self::new(trust_domain, pairs)
    }

    pub fn encode(&self) -> String {
        // Serializing plain strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(token: &str) -> Result<Self, InstallError> {
        let bad = |reason: String| InstallError::Invalid {
            flag: "--join",
            value: token.to_string(),
            reason,
        };
        let body = token
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("not a join token (expected the prefix {PREFIX:?}; make one with `isthmus install join-token`)")))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| bad(format!("not base64url: {e}")))?;
        let ticket: Self =
            serde_json::from_slice(&json).map_err(|e| bad(format!("unreadable: {e}")))?;
        ticket.check()?;
        Ok(ticket)
    }

    fn check(&self) -> Result<(), InstallError> {
        isthmus_identity::spiffe::validate_trust_domain(&self.trust_domain).map_err(|e| {
            InstallError::Invalid {
                flag: "--trust-domain",
                value: self.trust_domain.clone(),
                reason: e.to_string(),
            }
        })?;
        if self.peers.is_empty() {
            return Err(InstallError::Invalid {
                flag: "--peer",
                value: String::new(),
                reason: "a join token needs at least one federation member".into(),
            });
        }
        for p in &self.peers {
            check_dns_label("--peer", &p.id)?;
            let port_ok = p
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(InstallError::Invalid {
                    flag: "--peer",
                    value: format!("{}={}", p.id, p.address),
                    reason: "the address must be HOST:PORT".into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = JoinTicket::from_peer_args(
            "example.org",
            &[
                "west=west.fed.example.org:15031".into(),
                "witness=10.0.0.9:15031".into(),
            ],
        )
        .unwrap();
        let s = t.encode();
        assert!(s.starts_with(PREFIX));
        assert_eq!(JoinTicket::decode(&s).unwrap(), t);
        assert!(JoinTicket::decode("hello")
            .unwrap_err()
            .to_string()
            .contains("--join"));
        assert!(JoinTicket::decode(&format!("{PREFIX}!!")).is_err());
        assert!(JoinTicket::from_peer_args("example.org", &["west".into()]).is_err());
        assert!(JoinTicket::from_peer_args("example.org", &["west=nohost".into()]).is_err());
        assert!(JoinTicket::from_peer_args("example.org", &[]).is_err());
    }
}
