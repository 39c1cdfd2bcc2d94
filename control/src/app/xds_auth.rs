//! Who may speak for which proxy on the TLS xDS port (15012), as istiod
//! does: a client's verified SPIFFE certificate must name the namespace and
//! service account its node metadata claims, so one workload cannot pull
//! another's configuration (listeners, RBAC, the services it may reach).
//! The plaintext port (`--plaintext-xds-addr`, Istio's 15010) is for
//! trusted loopback and carries no identity, so it is not checked.

use std::sync::Arc;

use isthmus_identity::transport::TlsConnectInfo;
use isthmus_identity::SpiffeId;
use isthmus_xds::{Authorizer, Proxy};

/// The service account a node without `SERVICE_ACCOUNT` runs as (Kubernetes').
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The authorizer mounted on the TLS xDS services.
pub fn authorizer(trust_domain: &str) -> Authorizer {
    let trust_domain = trust_domain.to_string();
    Arc::new(move |proxy: &Proxy, ext: &tonic::Extensions| {
        check(&trust_domain, proxy, ext.get::<TlsConnectInfo>())
    })
}

/// Checks one stream's first request against its connection.
pub fn check(
    trust_domain: &str,
    proxy: &Proxy,
    info: Option<&TlsConnectInfo>,
) -> Result<(), String> {
    let node = &proxy.node_id;
    let Some(leaf) = info
        .and_then(|i| i.peer_certs.as_ref())
        .and_then(|c| c.first())
    else {
        return Err(format!(
            "xDS client {node:?} presented no client certificate: on the TLS xDS port a proxy authenticates with its workload certificate (check that the proxy has --ca, or use the plaintext port on trusted networks)"
        ));
    };
    let id = SpiffeId::from_cert_der(leaf.as_ref()).map_err(|e| {
        format!("xDS client {node:?}: its certificate carries no usable SPIFFE ID: {e}")
    })?;
    let sa = proxy
        .service_account
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    let expected = SpiffeId::new(trust_domain, &proxy.namespace, sa)
        .map_err(|e| format!("xDS client {node:?}: node metadata names no valid identity: {e}"))?;
    if id != expected {
        return Err(format!(
            "xDS client identity {} does not match its node {node:?}, which claims namespace {:?} and service account {sa:?} (expected {}): a proxy may only ask for its own workload's configuration",
            id.to_uri(),
            proxy.namespace,
            expected.to_uri()
        ));
    }
    Ok(())
}
