//! TLS origination toward servers outside the mesh (DestinationRule
//! `tls.mode: SIMPLE`/`MUTUAL`): the server is checked as a web client
//! checks it — its chain must lead to the configured CA (never the mesh
//! bundle, unless the context names it) and its certificate must carry the
//! SNI, or one of the configured DNS subject alt names.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{provider, SecretLookup, TlsError};
use crate::config::{ClientCertSource, Origination, SanMatcher, UpstreamTls};
use crate::tls::ServerCredential;

/// Client config for an originating cluster. Reads the CA and client
/// certificate files it names: call from a blocking context.
pub(crate) fn client_config(
    tls: &UpstreamTls,
    o: &Origination,
    secrets: &dyn SecretLookup,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut add = |der: CertificateDer<'static>, from: &str| {
        roots
            .add(der)
            .map_err(|e| TlsError::BadCertificate(format!("trust anchor from {from}: {e}")))
    };
    for der in &tls.validation.inline_roots {
        add(CertificateDer::from(der.clone()), "the inline trusted_ca")?;
    }
    if let Some(name) = &tls.validation.secret {
        let (r, _) = secrets
            .roots(name)
            .ok_or_else(|| TlsError::MissingSecret(name.clone()))?;
        for der in r {
            add(CertificateDer::from(der), &format!("SDS secret {name:?}"))?;
        }
    }
    if let Some(path) = &o.ca_file {
        let from = format!("caCertificates file {}", path.display());
        let pem = std::fs::read(path)
            .map_err(|e| TlsError::BadCertificate(format!("cannot read {from}: {e}")))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::BadCertificate(format!("{from} is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError::BadCertificate(format!(
                "{from} holds no CERTIFICATE block"
            )));
        }
        for der in certs {
            add(der, &from)?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::BadCertificate(
            "TLS origination has no trust anchor: set caCertificates or credentialName on the DestinationRule".into(),
        ));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
        .build()
        .map_err(|e| TlsError::BadCertificate(format!("trust anchors rejected: {e}")))?;
    let verifier = Arc::new(OriginationVerifier {
        webpki,
        dns_sans: o.dns_sans.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &o.client_cert {
        None => builder.with_no_client_auth(),
        Some(src) => {
            let cred = match src {
                ClientCertSource::Files { chain, key } => ServerCredential::from_files(chain, key)?,
                ClientCertSource::Inline(c) => c.clone(),
            };
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(cred.certified_key())))
        }
    };
    config.alpn_protocols = tls.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Web PKI chain and name checks; with DNS SAN matchers the name checked is
/// the first of the certificate's DNS names that a matcher accepts.
#[derive(Debug)]
struct OriginationVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    dns_sans: Vec<SanMatcher>,
}

impl ServerCertVerifier for OriginationVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.dns_sans.is_empty() {
            return self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            );
        }
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let Some(name) = names
            .iter()
            .find(|n| self.dns_sans.iter().any(|m| m.matches(n)))
        else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        };
        let name = ServerName::try_from(name.as_str())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        self.webpki
            .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
