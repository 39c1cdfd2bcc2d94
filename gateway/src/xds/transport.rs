//! The connection to the control plane: plaintext for `http://` (Istio's
//! 15010, trusted loopback and tests) or mutual TLS for `https://` (15012).
//!
//! Over TLS the proxy presents its current workload certificate (the one
//! its certificate manager obtained by CSR) and accepts only a control plane
//! whose chain verifies against the trust bundle and whose SPIFFE ID is the
//! expected one. The rustls configuration is rebuilt on every connect, so a
//! reconnect uses the certificate and bundle current at that moment; an
//! established stream is not disturbed by a rotation (TLS authenticates at
//! the handshake only), as with Envoy and istiod.

use std::sync::Arc;

use isthmus_identity::ChannelTls;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use super::XdsError;
use crate::config::SanMatcher;
use crate::tls::{provider, CertReceiver, SpiffeVerifier, WatchResolver};

/// ALPN for gRPC.
const H2: &[u8] = b"h2";

/// How to reach the control plane.
#[derive(Debug, Clone)]
pub enum XdsTransport {
    /// `http://`: no TLS.
    Plaintext,
    /// `https://`: mutual TLS with this proxy's certificate; the server must
    /// present `server_identity` (a SPIFFE URI).
    Tls {
        cert: CertReceiver,
        server_identity: String,
    },
}

/// Where and how to connect, parsed once from the `--xds` address.
#[derive(Debug, Clone)]
pub struct XdsTarget {
    /// `host:port` as given.
    authority: String,
    host: String,
    transport: XdsTransport,
}

impl XdsTarget {
    /// `address` is `http://HOST:PORT` (plaintext) or `https://HOST:PORT`
    /// (mutual TLS, which needs `cert` and `server_identity`).
    pub fn parse(
        address: &str,
        cert: Option<&CertReceiver>,
        server_identity: Option<&str>,
    ) -> Result<Self, XdsError> {
        let bad = |why: &str| XdsError::Address(address.to_string(), why.to_string());
        let uri: Uri = address
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host:port"))?
            .to_string();
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.port_u16().is_none() {
            return Err(bad("no port (e.g. https://isthmus-control:15012)"));
        }
        let transport = match uri.scheme_str() {
            Some("http") => XdsTransport::Plaintext,
            Some("https") => {
                let cert = cert.ok_or_else(|| {
                    bad("https:// needs the proxy's own certificate (pass --ca, or use http:// for a plaintext port)")
                })?;
                let server_identity = server_identity
                    .ok_or_else(|| bad("https:// needs the control plane's expected SPIFFE ID"))?;
                if !server_identity.starts_with("spiffe://") {
                    return Err(bad(&format!(
                        "the control plane's expected identity {server_identity:?} is not a spiffe:// URI"
                    )));
                }
                XdsTransport::Tls {
                    cert: cert.clone(),
                    server_identity: server_identity.to_string(),
                }
            }
            other => {
                return Err(bad(&format!(
                    "scheme {:?}: expected http:// or https://",
                    other.unwrap_or("")
                )))
            }
        };
        Ok(Self {
            authority,
            host,
            transport,
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.transport, XdsTransport::Tls { .. })
    }

    /// Connects (TCP, and TLS when configured) and returns a gRPC channel.
    pub async fn connect(&self, display: &str) -> Result<Channel, XdsError> {
        let connect_err = |e: String| XdsError::Connect(display.to_string(), e);
        // The URI only names the `:authority`; the shared connector dials
        // and does TLS itself, so tonic never needs its own TLS features.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.authority))
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(10))
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let tls = match &self.transport {
            XdsTransport::Plaintext => None,
            XdsTransport::Tls {
                cert,
                server_identity,
            } => Some(ChannelTls {
                config: client_config(cert, server_identity).map_err(connect_err)?,
                server_name: ServerName::try_from(self.host.clone())
                    .map_err(|_| connect_err(format!("{:?} is not a valid TLS name", self.host)))?,
            }),
        };
        isthmus_identity::channel::connect(&endpoint, tls)
            .await
            .map_err(|e| connect_err(error_chain(&e)))
    }
}

/// The whole source chain: tonic's top-level "transport error" alone does
/// not say that the certificate was refused.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn client_config(
    cert: &CertReceiver,
    server_identity: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = cert.borrow().trust_bundle().to_vec();
    let verifier =
        SpiffeVerifier::new(&roots, vec![SanMatcher::Exact(server_identity.to_string())])
            .map_err(|e| format!("trust bundle of the proxy certificate: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(WatchResolver(cert.clone())));
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}
