//! SPIFFE IDs in Istio's shape: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The trust domain used when none is configured (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Where the control plane's own certificate says it is: proxies expect
/// exactly this identity from the CA and from xDS over TLS.
pub const CONTROL_NAMESPACE: &str = "istio-system";
pub const CONTROL_SERVICE_ACCOUNT: &str = "isthmus-control";

const SCHEME: &str = "spiffe://";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeError {
    #[error("`{0}` is not a SPIFFE ID: it must start with `spiffe://`")]
    MissingScheme(String),
    #[error("invalid trust domain `{domain}`: {reason}")]
    BadTrustDomain {
        domain: String,
        reason: &'static str,
    },
    #[error("`{0}` is not an Istio workload identity: the path must be exactly /ns/<namespace>/sa/<service-account>")]
    BadPath(String),
    #[error("invalid {what} `{value}`: use 1-253 characters from [A-Za-z0-9._-]")]
    BadSegment { what: &'static str, value: String },
    #[error("certificate could not be parsed as X.509: {0}")]
    BadCertificate(String),
    #[error("certificate carries no spiffe:// URI SAN")]
    NoSpiffeSan,
    #[error("certificate carries {0} spiffe:// URI SANs; exactly one is required")]
    SeveralSpiffeSans(usize),
}

/// A workload identity. Ordered and hashable so sets of expected peers are cheap.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeError> {
        validate_trust_domain(trust_domain)?;
        validate_segment("namespace", namespace)?;
        validate_segment("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses `spiffe://td/ns/NS/sa/SA`; anything else (query, fragment, extra
    /// segments, percent-encoding, upper-case trust domain) is refused.
    pub fn parse(uri: &str) -> Result<Self, SpiffeError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeError::MissingScheme(uri.to_owned()))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeError::BadPath(uri.to_owned()))?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => Self::new(domain, ns, sa),
            _ => Err(SpiffeError::BadPath(uri.to_owned())),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    pub fn to_uri(&self) -> String {
        self.to_string()
    }

    /// Extracts the single SPIFFE URI SAN of a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, SpiffeError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| SpiffeError::BadCertificate(e.to_string()))?;
        Self::from_cert(&cert)
    }

    pub fn from_cert(cert: &X509Certificate<'_>) -> Result<Self, SpiffeError> {
        let uris = spiffe_uris(cert)?;
        match uris.as_slice() {
            [] => Err(SpiffeError::NoSpiffeSan),
            [one] => Self::parse(one),
            many => Err(SpiffeError::SeveralSpiffeSans(many.len())),
        }
    }
}

/// All `spiffe://` URI SANs of a certificate, as written.
pub(crate) fn spiffe_uris(cert: &X509Certificate<'_>) -> Result<Vec<String>, SpiffeError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SpiffeError::BadCertificate(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) if uri.starts_with(SCHEME) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Trust domains follow the SPIFFE spec: lower-case letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(domain: &str) -> Result<(), SpiffeError> {
    let bad = |reason| SpiffeError::BadTrustDomain {
        domain: domain.to_owned(),
        reason,
    };
    if domain.is_empty() {
        return Err(bad("it is empty"));
    }
    if domain.len() > 255 {
        return Err(bad("it is longer than 255 characters"));
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad(
            "only lower-case letters, digits, '.', '-' and '_' are allowed",
        ));
    }
    Ok(())
}

fn validate_segment(what: &'static str, value: &str) -> Result<(), SpiffeError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SpiffeError::BadSegment {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/bookinfo-reviews").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sb/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a%2f/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
