//! Join tokens: what a new cluster needs to join a running federation, as
//! one string (`isthmus federation token create`, read by `isthmus control
//! --join-token-file`). It names the trust domain, the SHA-256 fingerprints
//! of the federation's roots and some seed members' federation addresses. It
//! holds no secret and no key: the joining control plane authenticates with
//! the certificate its own intermediate issues, which must chain to one of
//! those roots, and the seeds are authenticated the same way.
//!
//! Tokens of `isthmus install join-token` (prefix `isthmus-join-v1.`, no
//! root fingerprints) are accepted too; they skip the root check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use isthmus_identity::TrustBundle;
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::install::JoinTicket;

const PREFIX: &str = "isthmus-join-v2.";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the join token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a join token: {0} (make one with `isthmus federation token create` on a member)")]
    Malformed(String),
    #[error("the join token is for trust domain `{token}`, but this cluster's MeshConfig says `{mine}`; a cluster can only join a federation of its own trust domain")]
    UnknownTrustDomain { token: String, mine: String },
    #[error("none of this cluster's roots ({mine}) is a root of the federation in the join token ({token}); this cluster's intermediate must be issued by the federation's root (`isthmus ca intermediate --root-dir ...`)")]
    UnknownRoot { token: String, mine: String },
    #[error("the root certificate is unusable: {0}")]
    Root(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinToken {
    pub trust_domain: String,
    /// Lower-case hex SHA-256 of each root's DER (empty: not checked).
    #[serde(default)]
    pub root_fingerprints: Vec<String>,
    pub seeds: Vec<Seed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// The member's cluster id (or witness name): its node id and the
    /// intermediate its certificate must come from follow from it.
    pub id: String,
    /// `host:port` of its federation listener (UDP, QUIC).
    pub address: String,
}

impl JoinToken {
    /// `seeds` as `NAME=HOST:PORT`; `roots_pem` the federation's root(s).
    pub fn new(trust_domain: &str, roots_pem: &str, seeds: &[String]) -> Result<Self, TokenError> {
        isthmus_identity::spiffe::validate_trust_domain(trust_domain)
            .map_err(|e| TokenError::Malformed(format!("trust domain: {e}")))?;
        let bundle = TrustBundle::from_pem(roots_pem, "the federation's root certificate")
            .map_err(|e| TokenError::Root(e.to_string()))?;
        let mut out = Vec::new();
        for s in seeds {
            let (id, address) = s.split_once('=').ok_or_else(|| {
                TokenError::Malformed(format!("seed `{s}`: expected NAME=HOST:PORT"))
            })?;
            check_address(address)
                .map_err(|e| TokenError::Malformed(format!("seed `{s}`: {e}")))?;
            out.push(Seed {
                id: id.to_string(),
                address: address.to_string(),
            });
        }
        if out.is_empty() {
            return Err(TokenError::Malformed(
                "a join token needs at least one seed".into(),
            ));
        }
        Ok(JoinToken {
            trust_domain: trust_domain.to_string(),
            root_fingerprints: bundle.fingerprints().map(|f| f.to_string()).collect(),
            seeds: out,
        })
    }

    pub fn encode(&self) -> String {
        // Plain strings always serialize.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.starts_with("isthmus-join-v1.") {
            let t = JoinTicket::decode(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
            return Ok(JoinToken {
                trust_domain: t.trust_domain,
                root_fingerprints: Vec::new(),
                seeds: t
                    .peers
                    .into_iter()
                    .map(|p| Seed {
                        id: p.id,
                        address: p.address,
                    })
                    .collect(),
            });
        }
        let body = token
            .strip_prefix(PREFIX)
            .ok_or_else(|| TokenError::Malformed(format!("expected the prefix {PREFIX:?}")))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Malformed(format!("not base64url: {e}")))?;
        let t: JoinToken = serde_json::from_slice(&json)
            .map_err(|e| TokenError::Malformed(format!("unreadable: {e}")))?;
        if t.seeds.is_empty() {
            return Err(TokenError::Malformed("the token names no seed".into()));
        }
        for s in &t.seeds {
            check_address(&s.address)
                .map_err(|e| TokenError::Malformed(format!("seed {}: {e}", s.id)))?;
        }
        Ok(t)
    }

    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::decode(&text)
    }

    /// Refuses a token of another trust domain or another root.
    pub fn check_for(&self, trust_domain: &str, roots_pem: &str) -> Result<(), TokenError> {
        if self.trust_domain != trust_domain {
            return Err(TokenError::UnknownTrustDomain {
                token: self.trust_domain.clone(),
                mine: trust_domain.to_string(),
            });
        }
        if self.root_fingerprints.is_empty() {
            return Ok(());
        }
        let mine = TrustBundle::from_pem(roots_pem, "this cluster's root-cert.pem")
            .map_err(|e| TokenError::Root(e.to_string()))?;
        let mine: Vec<String> = mine.fingerprints().map(|f| f.to_string()).collect();
        if mine.iter().any(|f| self.root_fingerprints.contains(f)) {
            Ok(())
        } else {
            Err(TokenError::UnknownRoot {
                token: self.root_fingerprints.join(", "),
                mine: mine.join(", "),
            })
        }
    }
}

fn check_address(address: &str) -> Result<(), String> {
    let ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("address `{address}` must be HOST:PORT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn round_trips_checks_domain_and_root_and_holds_no_key() {
        let (ours, other) = (root(), root());
        let t = JoinToken::new(
            "example.org",
            &ours,
            &["east=10.0.0.1:15031".into(), "west=10.0.0.2:15031".into()],
        )
        .unwrap();
        let s = t.encode();
        assert!(s.starts_with(PREFIX));
        let back = JoinToken::decode(&format!("  {s}\n")).unwrap();
        assert_eq!(back, t);
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(&s[PREFIX.len()..]).unwrap()).unwrap();
        assert!(!json.contains("PRIVATE"), "{json}");
        assert!(back.check_for("example.org", &ours).is_ok());
        assert!(matches!(
            back.check_for("other.org", &ours),
            Err(TokenError::UnknownTrustDomain { .. })
        ));
        assert!(matches!(
            back.check_for("example.org", &other),
            Err(TokenError::UnknownRoot { .. })
        ));
        assert!(JoinToken::decode("garbage").is_err());
        assert!(JoinToken::new("example.org", &ours, &["east".into()]).is_err());
        assert!(JoinToken::new("example.org", &ours, &[]).is_err());
    }

    #[test]
    fn accepts_install_tokens_without_a_root_check() {
        let v1 = JoinTicket::new("example.org", vec![("east", "10.0.0.1:15031")])
            .unwrap()
            .encode();
        let t = JoinToken::decode(&v1).unwrap();
        assert_eq!(t.seeds[0].id, "east");
        assert!(t.check_for("example.org", &root()).is_ok());
    }
}
