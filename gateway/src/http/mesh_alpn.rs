//! The ALPN a sidecar offers when it sends HTTP over mesh mTLS, as Istio's
//! `istio.alpn` filter does: `istio-http/1.1` or `istio-h2`, which lets the
//! server's sidecar pick its HTTP chain on a port without a declared
//! protocol (it cannot see inside the TLS). The standard name goes along
//! (`http/1.1`, `h2`): a server that configures ALPN (an ingress or egress
//! gateway) still finds a protocol in common, where rustls would refuse a
//! handshake without one.
//!
//! Only for mesh mTLS (the workload certificate, SPIFFE checks) and only
//! when the cluster sets no ALPN of its own; TCP proxying offers none, so
//! its connections keep reaching the TCP chain.

use super::pool::Wire;
use crate::config::UpstreamTls;

/// What the HTTP path offers on a new connection, if it overrides the
/// cluster's (empty) ALPN.
pub fn offer(tls: Option<&UpstreamTls>, wire: Wire) -> Option<Vec<Vec<u8>>> {
    let tls = tls?;
    let mesh = tls.origination.is_none() && tls.cert_secret.as_deref() == Some("default");
    if !mesh || !tls.alpn.is_empty() {
        return None;
    }
    let names: [&[u8]; 2] = match wire {
        Wire::Http1 => [b"istio-http/1.1", b"http/1.1"],
        Wire::Http2 => [b"istio-h2", b"h2"],
    };
    Some(names.iter().map(|n| n.to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Validation;

    fn mesh() -> UpstreamTls {
        UpstreamTls {
            sni: Some("outbound_.80_._.a.ns.svc.cluster.local".into()),
            cert_secret: Some("default".into()),
            validation: Validation {
                secret: Some("ROOTCA".into()),
                inline_roots: Vec::new(),
                san_matchers: Vec::new(),
            },
            alpn: Vec::new(),
            origination: None,
        }
    }

    #[test]
    fn mesh_http_offers_istio_and_standard_names() {
        assert_eq!(
            offer(Some(&mesh()), Wire::Http1),
            Some(vec![b"istio-http/1.1".to_vec(), b"http/1.1".to_vec()])
        );
        assert_eq!(
            offer(Some(&mesh()), Wire::Http2),
            Some(vec![b"istio-h2".to_vec(), b"h2".to_vec()])
        );
    }

    #[test]
    fn other_tls_keeps_its_own_alpn() {
        assert_eq!(offer(None, Wire::Http1), None);
        let mut own = mesh();
        own.alpn = vec!["h2".into()];
        assert_eq!(offer(Some(&own), Wire::Http2), None);
        let mut simple = mesh();
        simple.cert_secret = None;
        assert_eq!(offer(Some(&simple), Wire::Http1), None);
    }
}
