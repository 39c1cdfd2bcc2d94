//! PEM helpers shared by the CA, the bundle and the workload side.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::ca::CaError;

/// Every `CERTIFICATE` block of `pem`, in order; at least one is required.
pub fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::BadPem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::NoPem {
            what: what.to_owned(),
            label: "CERTIFICATE",
        });
    }
    for (i, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| CaError::BadCertificate {
            what: format!("{what} (certificate #{})", i + 1),
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

pub(crate) fn first_cert_der(pem: &str, what: &str) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = certs_from_pem(pem, what)?;
    Ok(certs.swap_remove(0))
}

/// PEM text of one DER certificate.
pub fn cert_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
