//! Human-readable description of a PEM file of certificates (`isthmus ca inspect`).

use std::fmt::Write as _;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519, OID_SIG_ED448};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::ca::CaError;
use crate::pem::certs_from_pem;

/// Describes every certificate of `pem`: subject, issuer, validity, key type,
/// CA constraints, key usages, SANs, and whether each is signed by the next one.
pub fn describe_pem(pem: &str, what: &str) -> Result<String, CaError> {
    let ders = certs_from_pem(pem, what)?;
    let mut parsed = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CaError::BadCertificate {
            what: format!("{what} (certificate #{})", i + 1),
            reason: e.to_string(),
        })?;
        parsed.push(cert);
    }
    let now = OffsetDateTime::now_utc();
    let mut out = String::new();
    for (i, cert) in parsed.iter().enumerate() {
        describe_one(&mut out, i, cert, parsed.get(i + 1), now);
    }
    Ok(out)
}

fn describe_one(
    out: &mut String,
    index: usize,
    cert: &X509Certificate<'_>,
    next: Option<&X509Certificate<'_>>,
    now: OffsetDateTime,
) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "certificate #{}", index + 1);
    let _ = writeln!(
        out,
        "  subject:       {}",
        or_empty(cert.subject().to_string())
    );
    let _ = writeln!(
        out,
        "  issuer:        {}",
        or_empty(cert.issuer().to_string())
    );
    let _ = writeln!(out, "  serial:        {}", cert.raw_serial_as_string());
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let state = if now < not_before {
        "NOT YET VALID"
    } else if now > not_after {
        "EXPIRED"
    } else {
        "valid"
    };
    let _ = writeln!(out, "  not before:    {not_before}");
    let _ = writeln!(out, "  not after:     {not_after} ({state})");
    let _ = writeln!(out, "  key:           {}", key_type(cert));
    match cert.basic_constraints().ok().flatten() {
        Some(bc) if bc.value.ca => {
            let len = bc
                .value
                .path_len_constraint
                .map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
            let _ = writeln!(out, "  CA:            yes, path length {len}");
        }
        _ => {
            let _ = writeln!(out, "  CA:            no");
        }
    }
    if let Some(ku) = cert.key_usage().ok().flatten() {
        let _ = writeln!(out, "  key usage:     {}", ku.value);
    }
    if let Some(eku) = cert.extended_key_usage().ok().flatten() {
        let mut names = Vec::new();
        if eku.value.server_auth {
            names.push("serverAuth");
        }
        if eku.value.client_auth {
            names.push("clientAuth");
        }
        if eku.value.any {
            names.push("any");
        }
        let _ = writeln!(out, "  ext key usage: {}", names.join(", "));
    }
    if let Some(san) = cert.subject_alternative_name().ok().flatten() {
        let names: Vec<String> = san.value.general_names.iter().map(general_name).collect();
        let critical = if san.critical { " (critical)" } else { "" };
        let _ = writeln!(out, "  SANs{critical}: {}", names.join(", "));
    }
    let self_signed = cert.subject() == cert.issuer();
    let signed_by = if self_signed {
        match cert.verify_signature(None) {
            Ok(()) => "itself (self-signed root, signature verified)".to_owned(),
            Err(e) => format!("itself, but the signature does NOT verify: {e}"),
        }
    } else if let Some(next) = next {
        if next.subject() != cert.issuer() {
            format!(
                "certificate #{} does NOT match the issuer name: the chain is out of order",
                index + 2
            )
        } else {
            match cert.verify_signature(Some(next.public_key())) {
                Ok(()) => format!("certificate #{} (signature verified)", index + 2),
                Err(e) => format!(
                    "certificate #{} names the issuer but the signature does NOT verify: {e}",
                    index + 2
                ),
            }
        }
    } else {
        "an issuer not in this file".to_owned()
    };
    let _ = writeln!(out, "  signed by:     {signed_by}");
}

fn key_type(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return "Ed25519".to_owned();
    }
    if *alg == OID_SIG_ED448 {
        return "Ed448".to_owned();
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {} bits", rsa.key_size()),
        Ok(PublicKey::EC(ec)) if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY => match ec.key_size() {
            256 => "ECDSA P-256".to_owned(),
            384 => "ECDSA P-384".to_owned(),
            521 => "ECDSA P-521".to_owned(),
            n => format!("ECDSA {n} bits"),
        },
        _ => format!("unknown ({alg})"),
    }
}

/// OpenSSL-style `TYPE:value`, which operators know from `openssl x509 -text`.
fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(bytes);
                format!("IP:{}", std::net::Ipv4Addr::from(a))
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(bytes);
                format!("IP:{}", std::net::Ipv6Addr::from(a))
            }
            _ => format!("IP:(malformed, {} bytes)", bytes.len()),
        },
        other => other.to_string(),
    }
}

fn or_empty(s: String) -> String {
    if s.is_empty() {
        "(empty)".to_owned()
    } else {
        s
    }
}
