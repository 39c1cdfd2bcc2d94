//! The clients: rustls + hyper HTTPS requests (optionally with a client
//! certificate) reporting the certificate the server presented, and `curl`
//! as an independent TLS client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::pki::Leaf;

pub(crate) fn tls_client(roots_pem: &str, client: Option<&Leaf>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .map(|c| c.expect("pem"))
                    .collect(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// GET https://{sni}/ through `at`; the status and body, or why it failed.
/// The leaf certificate's DNS name the server presented comes back too.
pub(crate) async fn https_get(
    at: SocketAddr,
    sni: &str,
    roots_pem: &str,
    client: Option<&Leaf>,
) -> Result<(u16, String, String), String> {
    let tcp = TcpStream::connect(at).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tls_client(roots_pem, client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| dns_name(c.as_ref()))
        .unwrap_or_default();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = ::http::Request::builder()
        .uri("/hello")
        .header("host", sni)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        presented,
    ))
}

pub(crate) fn dns_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("cert");
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        })
        .unwrap_or_default()
}

/// `curl` as an independent TLS client: the body, or its error output.
pub(crate) async fn curl(at: SocketAddr, host: &str, ca_file: &Path) -> Result<String, String> {
    let out = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--cacert"])
        .arg(ca_file)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", at.port()))
        .arg(format!("https://{host}:{}/curl", at.port()))
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            format!("curl could not run ({e}); CI installs it (.cfg in .ci/run): is it on PATH?")
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
