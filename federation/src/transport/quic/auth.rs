//! Who may talk Raft to us, and as which node. TLS (the identity crate's
//! verifiers) proves that a peer holds a certificate of the federation's
//! trust bundle; the authorizer then binds that certificate to the Raft node
//! id the peer claims, so one member can never speak for another.

use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::Arc;

/// Which side opened the connection the identity was seen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerDirection {
    /// The peer connected to us and claimed `node_id` in its stream hello.
    Inbound,
    /// We connected to the address configured for `node_id`.
    Outbound,
}

impl PeerDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerDirection::Inbound => "inbound",
            PeerDirection::Outbound => "outbound",
        }
    }
}

/// What the transport knows about a peer when it asks the authorizer.
#[derive(Debug, Clone, Copy)]
pub struct PeerIdentity<'a> {
    /// The Raft node id the peer speaks for.
    pub node_id: u64,
    pub direction: PeerDirection,
    /// The chain the peer presented and TLS verified, leaf first.
    pub chain: &'a [CertificateDer<'static>],
}

impl PeerIdentity<'_> {
    /// Every `spiffe://` URI SAN of the leaf certificate.
    pub fn spiffe_ids(&self) -> Result<Vec<String>, String> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| "peer presented no certificate".to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("unparsable peer certificate: {e}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?
            .ok_or_else(|| "peer certificate has no subjectAltName".to_string())?;
        Ok(san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                    Some(u.to_string())
                }
                _ => None,
            })
            .collect())
    }

    /// Common name of the CA that signed the leaf (its issuer DN), e.g.
    /// `Isthmus intermediate CA east` for cluster `east`'s intermediate.
    /// Only meaningful after TLS verified the chain: an intermediate with
    /// path length 0 cannot mint a CA of another name under the root.
    pub fn leaf_issuer_common_name(&self) -> Result<String, String> {
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| "peer presented no certificate".to_string())?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("unparsable peer certificate: {e}"))?;
        let cn = cert
            .issuer()
            .iter_common_name()
            .next()
            .ok_or_else(|| "peer certificate's issuer has no common name".to_string())?;
        cn.as_str()
            .map(str::to_string)
            .map_err(|e| format!("peer certificate's issuer common name is not text: {e}"))
    }

    /// The leaf's single SPIFFE id; several or none is an error.
    pub fn spiffe_id(&self) -> Result<String, String> {
        let mut ids = self.spiffe_ids()?;
        match ids.len() {
            1 => Ok(ids.remove(0)),
            0 => Err("peer certificate carries no spiffe:// URI SAN".into()),
            n => Err(format!(
                "peer certificate carries {n} spiffe:// URI SANs; exactly one is required"
            )),
        }
    }
}

/// Decides whether a peer may speak Raft as `PeerIdentity::node_id`. The
/// error text is logged with the refusal, so it should name what to fix.
pub type PeerAuthorizer = Arc<dyn Fn(&PeerIdentity<'_>) -> Result<(), String> + Send + Sync>;

fn in_trust_domain(id: &str, trust_domain: &str) -> bool {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_prefix(trust_domain))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Accepts any leaf with a SPIFFE id in `trust_domain`, as any node id. It
/// does not bind certificates to node ids: use it only where every member
/// is equally trusted (tests, a single-operator lab). Production uses
/// [`node_identity_authorizer`].
pub fn trust_domain_authorizer(trust_domain: &str) -> PeerAuthorizer {
    let td = trust_domain.to_string();
    Arc::new(move |peer: &PeerIdentity<'_>| {
        let ids = peer.spiffe_ids()?;
        if ids.iter().any(|u| in_trust_domain(u, &td)) {
            Ok(())
        } else {
            Err(format!("peer identity {ids:?} is not in trust domain {td}"))
        }
    })
}

/// Binds node ids to SPIFFE ids: node `n` must present exactly the SPIFFE id
/// `expected(n)`, which must be in `trust_domain`. Node ids `expected` does
/// not know (`None`) are refused. `expected` may be a lookup table or a
/// rule; it is called on every new connection and stream, never per message.
pub fn node_identity_authorizer(
    trust_domain: &str,
    expected: impl Fn(u64) -> Option<String> + Send + Sync + 'static,
) -> PeerAuthorizer {
    let td = trust_domain.to_string();
    Arc::new(move |peer: &PeerIdentity<'_>| {
        let presented = peer.spiffe_id()?;
        if !in_trust_domain(&presented, &td) {
            return Err(format!(
                "peer identity {presented} is not in trust domain {td}"
            ));
        }
        let Some(want) = expected(peer.node_id) else {
            return Err(format!(
                "node id {} is not a known federation member (peer presented {presented}); add it to the federation peers",
                peer.node_id
            ));
        };
        if presented == want {
            Ok(())
        } else {
            Err(format!(
                "peer presented {presented} but node id {} must present {want}; check which certificate that member's control plane uses",
                peer.node_id
            ))
        }
    })
}

/// For members that all share one SPIFFE id (every control plane runs as
/// the same service account) but each holds a certificate from its own
/// cluster's intermediate CA: node `n` must present `spiffe_id`, issued by
/// the CA whose common name is `issuer(n)`.
pub fn node_issuer_authorizer(
    spiffe_id: &str,
    issuer: impl Fn(u64) -> Option<String> + Send + Sync + 'static,
) -> PeerAuthorizer {
    let want_id = spiffe_id.to_string();
    Arc::new(move |peer: &PeerIdentity<'_>| {
        let presented = peer.spiffe_id()?;
        if presented != want_id {
            return Err(format!(
                "peer presented {presented}; federation members must present {want_id}"
            ));
        }
        let Some(want) = issuer(peer.node_id) else {
            return Err(format!(
                "node id {} is not a known federation member; add it to the federation peers",
                peer.node_id
            ));
        };
        let got = peer.leaf_issuer_common_name()?;
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "node id {} must hold a certificate issued by `{want}`, this one was issued by `{got}`; a member is using another cluster's certificate",
                peer.node_id
            ))
        }
    })
}

/// Like [`node_issuer_authorizer`], for members not known in advance (a
/// cluster joining with a join token): `rule(node_id, issuer_cn)` decides
/// whether the CA named `issuer_cn` may speak for `node_id`, e.g. because
/// the node id is derived from the cluster name inside the CA's name. The
/// chain has been verified against the trust bundle before, so only the
/// federation's root can have issued that CA.
pub fn node_issuer_rule_authorizer(
    spiffe_id: &str,
    rule: impl Fn(u64, &str) -> Result<(), String> + Send + Sync + 'static,
) -> PeerAuthorizer {
    let want_id = spiffe_id.to_string();
    Arc::new(move |peer: &PeerIdentity<'_>| {
        let presented = peer.spiffe_id()?;
        if presented != want_id {
            return Err(format!(
                "peer presented {presented}; federation members must present {want_id}"
            ));
        }
        let got = peer.leaf_issuer_common_name()?;
        rule(peer.node_id, &got)
    })
}

/// [`node_identity_authorizer`] over a fixed table node id -> SPIFFE id.
pub fn node_identity_map(trust_domain: &str, ids: HashMap<u64, String>) -> PeerAuthorizer {
    node_identity_authorizer(trust_domain, move |n| ids.get(&n).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn leaf(uris: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        params.self_signed(&key).unwrap().der().clone()
    }

    fn check(a: &PeerAuthorizer, node_id: u64, uris: &[&str]) -> Result<(), String> {
        let chain = vec![leaf(uris)];
        a(&PeerIdentity {
            node_id,
            direction: PeerDirection::Inbound,
            chain: &chain,
        })
    }

    #[test]
    fn trust_domain_is_matched_exactly() {
        let a = trust_domain_authorizer("fed.test");
        assert!(check(&a, 1, &["spiffe://fed.test/ns/a/sa/b"]).is_ok());
        assert!(check(&a, 1, &["spiffe://fed.test.evil/ns/a/sa/b"]).is_err());
        assert!(check(&a, 1, &["spiffe://other.test/ns/a/sa/b"]).is_err());
        assert!(check(&a, 1, &[]).is_err());
    }

    #[test]
    fn node_ids_are_bound_to_their_spiffe_ids() {
        let a = node_identity_map(
            "fed.test",
            HashMap::from([
                (1, "spiffe://fed.test/ns/fed/sa/node-1".to_string()),
                (2, "spiffe://fed.test/ns/fed/sa/node-2".to_string()),
            ]),
        );
        assert!(check(&a, 1, &["spiffe://fed.test/ns/fed/sa/node-1"]).is_ok());
        let err = check(&a, 2, &["spiffe://fed.test/ns/fed/sa/node-1"]).unwrap_err();
        assert!(err.contains("node id 2 must present"), "{err}");
        let err = check(&a, 3, &["spiffe://fed.test/ns/fed/sa/node-1"]).unwrap_err();
        assert!(err.contains("not a known federation member"), "{err}");
        // Two SPIFFE ids are ambiguous; refuse rather than pick one.
        assert!(check(
            &a,
            1,
            &[
                "spiffe://fed.test/ns/fed/sa/node-1",
                "spiffe://fed.test/ns/fed/sa/node-2"
            ]
        )
        .is_err());
    }

    /// A leaf with `uri` signed by a CA named `ca_cn`.
    fn issued_by(ca_cn: &str, uri: &str) -> CertificateDer<'static> {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, ca_cn);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        p.signed_by(&key, &issuer).unwrap().der().clone()
    }

    #[test]
    fn shared_spiffe_ids_are_told_apart_by_their_issuing_ca() {
        const CP: &str = "spiffe://fed.test/ns/istio-system/sa/isthmus-control";
        let a = node_issuer_authorizer(CP, |n| match n {
            1 => Some("Isthmus intermediate CA east".to_string()),
            2 => Some("Isthmus intermediate CA west".to_string()),
            _ => None,
        });
        let east = vec![issued_by("Isthmus intermediate CA east", CP)];
        let check = |node_id: u64, chain: &[CertificateDer<'static>]| {
            a(&PeerIdentity {
                node_id,
                direction: PeerDirection::Outbound,
                chain,
            })
        };
        assert!(check(1, &east).is_ok());
        let err = check(2, &east).unwrap_err();
        assert!(
            err.contains("issued by `Isthmus intermediate CA east`"),
            "{err}"
        );
        assert!(check(3, &east).is_err());
        let workload = vec![issued_by(
            "Isthmus intermediate CA east",
            "spiffe://fed.test/ns/shop/sa/reviews",
        )];
        assert!(check(1, &workload).is_err(), "a workload is not a member");
    }

    #[test]
    fn an_issuer_rule_can_admit_members_not_listed_in_advance() {
        const CP: &str = "spiffe://fed.test/ns/istio-system/sa/isthmus-control";
        // Node id = length of the cluster name in the CA's common name.
        let a = node_issuer_rule_authorizer(CP, |n, cn| {
            match cn.strip_prefix("Isthmus intermediate CA ") {
                Some(name) if name.len() as u64 == n => Ok(()),
                _ => Err(format!("`{cn}` may not speak for node {n}")),
            }
        });
        let check = |node_id: u64, chain: &[CertificateDer<'static>]| {
            a(&PeerIdentity {
                node_id,
                direction: PeerDirection::Inbound,
                chain,
            })
        };
        let north = vec![issued_by("Isthmus intermediate CA north", CP)];
        assert!(check(5, &north).is_ok());
        assert!(check(4, &north)
            .unwrap_err()
            .contains("may not speak for node 4"));
        let workload = vec![issued_by(
            "Isthmus intermediate CA north",
            "spiffe://fed.test/ns/shop/sa/reviews",
        )];
        assert!(check(5, &workload).is_err(), "a workload is not a member");
    }

    #[test]
    fn a_rule_can_derive_the_expected_id() {
        let a = node_identity_authorizer("fed.test", |n| {
            Some(format!("spiffe://fed.test/ns/fed/sa/node-{n}"))
        });
        assert!(check(&a, 7, &["spiffe://fed.test/ns/fed/sa/node-7"]).is_ok());
        assert!(check(&a, 8, &["spiffe://fed.test/ns/fed/sa/node-7"]).is_err());
        // The expected id must still be in the trust domain.
        let b = node_identity_authorizer("fed.test", |_| {
            Some("spiffe://other.test/ns/fed/sa/node-1".to_string())
        });
        assert!(check(&b, 1, &["spiffe://other.test/ns/fed/sa/node-1"]).is_err());
    }
}
