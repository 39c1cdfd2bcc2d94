//! gRPC channels from a workload or proxy to the mesh's own servers: the CA,
//! the xDS server, an OTLP collector.
//!
//! Every caller dials through the one connector here, plaintext or TLS, so
//! tonic's channel, its reconnect logic and the HTTP/2 client are compiled
//! once for the whole binary instead of once per call site and transport
//! (each a few hundred kilobytes of code that every sidecar maps).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// TLS towards a server; the config's verifier decides which identity is
/// accepted, `server_name` is the SNI sent.
#[derive(Clone, Debug)]
pub struct ChannelTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Connects `endpoint`, over TLS when `tls` is given. The endpoint's
/// `host:port` is dialled as is; its scheme does not matter.
pub async fn connect(
    endpoint: &Endpoint,
    tls: Option<ChannelTls>,
) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect_with_connector(connector(tls)).await
}

/// As [`connect`], dialling on first use.
pub fn connect_lazy(endpoint: &Endpoint, tls: Option<ChannelTls>) -> Channel {
    endpoint.connect_with_connector_lazy(connector(tls))
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type BoxIo = TokioIo<Pin<Box<dyn Io>>>;

fn connector(
    tls: Option<ChannelTls>,
) -> impl tower::Service<
    Uri,
    Response = BoxIo,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<BoxIo>> + Send,
> + Clone
       + Send
       + 'static {
    let tls = tls.map(|t| (TlsConnector::from(t.config), t.server_name));
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(authority(&uri)?).await?;
            let _ = tcp.set_nodelay(true);
            let io: Pin<Box<dyn Io>> = match tls {
                None => Box::pin(tcp),
                Some((connector, name)) => Box::pin(connector.connect(name, tcp).await?),
            };
            Ok(TokioIo::new(io))
        }
    })
}

/// `host:port` of `uri`, the port defaulting by scheme.
fn authority(uri: &Uri) -> std::io::Result<String> {
    let host = uri.host().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: no host"))
    })?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_keeps_brackets_and_defaults_the_port() {
        let a = |s: &str| authority(&s.parse().unwrap()).unwrap();
        assert_eq!(a("http://ca.example:15012"), "ca.example:15012");
        assert_eq!(a("http://[::1]:15010"), "[::1]:15010");
        assert_eq!(a("https://collector"), "collector:443");
        assert_eq!(a("http://collector"), "collector:80");
        assert!(authority(&Uri::from_static("/path")).is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        assert!(connect(&endpoint, None).await.is_err());
    }
}
