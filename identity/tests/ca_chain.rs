//! The CA's certificates: chains verified by webpki and by `openssl verify`,
//! exact SPIFFE SANs, intermediate constraints, refusals, CLI files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use isthmus_identity::ca::{create_root, KeyAlgorithm, RootOptions};
use isthmus_identity::verify::{verify_chain, PeerRole};
use isthmus_identity::{CaCommand, CaError, LeafPolicy, TrustBundle};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::*;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn openssl_verify(
    dir: &std::path::Path,
    root: &str,
    untrusted: &str,
    leaf: &str,
) -> (bool, String) {
    std::fs::write(dir.join("root.pem"), root).unwrap();
    std::fs::write(dir.join("untrusted.pem"), untrusted).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-x509_strict")
        .arg("-CAfile")
        .arg(dir.join("root.pem"))
        .arg("-untrusted")
        .arg(dir.join("untrusted.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .expect("the openssl command-line tool is required (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn issue_leaf(pki: &Pki, ns: &str, sa: &str) -> Vec<String> {
    let authority = pki.authority(LeafPolicy::default());
    let me = id(ns, sa);
    let (_key, csr) = csr_for(&me.to_uri());
    authority.sign_csr(&csr, &me, None).unwrap().chain_pem
}

#[test]
fn chain_verifies_with_webpki_and_openssl() {
    init_crypto();
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
    ] {
        let root = create_root(&RootOptions {
            algorithm: alg,
            ..RootOptions::default()
        })
        .unwrap();
        let pki = Pki::under(root, TD, "east");
        let chain = issue_leaf(&pki, "default", "reviews");
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");

        let got = verify_chain(
            &pki.bundle(),
            &der(&chain[0]),
            &[der(&chain[1])],
            UnixTime::now(),
            PeerRole::Client,
            &algs(),
        )
        .unwrap();
        assert_eq!(got, id("default", "reviews"));
        verify_chain(
            &pki.bundle(),
            &der(&chain[0]),
            &[der(&chain[1])],
            UnixTime::now(),
            PeerRole::Server,
            &algs(),
        )
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (ok, text) = openssl_verify(dir.path(), &pki.root.cert_pem, &chain[1], &chain[0]);
        assert!(ok, "openssl verify failed for {alg}: {text}");

        // The independent verifier also refuses a chain under a foreign root.
        let other = Pki::new(TD, "west");
        let (ok, text) = openssl_verify(dir.path(), &other.root.cert_pem, &chain[1], &chain[0]);
        assert!(!ok, "openssl accepted a chain under a foreign root: {text}");
    }
}

#[test]
fn rsa_root_from_an_imported_key_verifies() {
    init_crypto();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("rsa.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(status.status.success());
    let root = create_root(&RootOptions {
        algorithm: KeyAlgorithm::Rsa,
        key_pem: Some(std::fs::read_to_string(&key_path).unwrap()),
        ..RootOptions::default()
    })
    .unwrap();
    let pki = Pki::under(root, TD, "east");
    let chain = issue_leaf(&pki, "default", "ratings");
    verify_chain(
        &pki.bundle(),
        &der(&chain[0]),
        &[der(&chain[1])],
        UnixTime::now(),
        PeerRole::Client,
        &algs(),
    )
    .unwrap();
    let (ok, text) = openssl_verify(dir.path(), &pki.root.cert_pem, &chain[1], &chain[0]);
    assert!(ok, "{text}");
    let described = isthmus_identity::inspect::describe_pem(&pki.root.cert_pem, "root").unwrap();
    assert!(described.contains("RSA 2048 bits"), "{described}");
}

#[test]
fn rsa_generation_is_refused_clearly() {
    let err = create_root(&RootOptions {
        algorithm: KeyAlgorithm::Rsa,
        ..RootOptions::default()
    })
    .unwrap_err();
    assert!(matches!(err, CaError::KeyGenerationUnavailable(_)));
    assert!(err.to_string().contains("--key"), "{err}");
}

#[test]
fn leaf_carries_exactly_the_spiffe_san_and_leaf_constraints() {
    let pki = Pki::new(TD, "east");
    let authority = pki.authority(LeafPolicy::default());
    let me = id("bookinfo", "reviews");
    // The CSR also asks for a DNS name and an IP: the CA drops them.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![
        "reviews.bookinfo.svc".to_owned(),
        "10.0.0.1".to_owned(),
    ])
    .unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(me.to_uri().try_into().unwrap()));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let leaf = authority.sign_csr(&csr, &me, None).unwrap();

    let leaf_der = der(&leaf.chain_pem[0]);
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1);
    match &san.value.general_names[0] {
        GeneralName::URI(uri) => assert_eq!(*uri, "spiffe://cluster.local/ns/bookinfo/sa/reviews"),
        other => panic!("unexpected SAN {other:?}"),
    }
    assert!(san.critical, "SAN must be critical with an empty subject");
    assert!(cert.subject().iter_attributes().next().is_none());
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the leaf certifies the CSR's key"
    );
    // Default lifetime: 24 h (+ the one-minute back-dating).
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 24 * 3600 + 60);
}

#[test]
fn intermediate_has_path_length_zero_and_ca_key_usage() {
    let pki = Pki::new(TD, "east");
    let d = der(&pki.intermediate.cert_pem);
    let (_, cert) = X509Certificate::from_der(&d).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.key_encipherment());
    assert!(cert.subject().to_string().contains("east"));

    // A leaf signed by a CA under the intermediate would violate pathlen 0:
    // webpki must refuse it, proving the constraint is enforced, not decorative.
    let sub = isthmus_identity::ca::create_intermediate(
        &pki.intermediate,
        &isthmus_identity::ca::IntermediateOptions::new("nested"),
    )
    .unwrap();
    let nested = Pki {
        root: pki.root.clone(),
        intermediate: sub.clone(),
        chain_pem: format!(
            "{}{}{}",
            sub.cert_pem, pki.intermediate.cert_pem, pki.root.cert_pem
        ),
        trust_domain: TD.to_owned(),
    };
    let chain = issue_leaf(&nested, "default", "x");
    let err = verify_chain(
        &pki.bundle(),
        &der(&chain[0]),
        &[der(&chain[1]), der(&chain[2])],
        UnixTime::now(),
        PeerRole::Client,
        &algs(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("chain rejected"), "{err}");
}

#[test]
fn csr_for_another_identity_is_refused() {
    let pki = Pki::new(TD, "east");
    let authority = pki.authority(LeafPolicy::default());
    let (_k, csr) = csr_for("spiffe://cluster.local/ns/kube-system/sa/admin");
    let err = authority
        .sign_csr(&csr, &id("default", "reviews"), None)
        .unwrap_err();
    assert!(matches!(err, CaError::CsrIdentityMismatch { .. }), "{err}");
    assert!(err.to_string().contains("ns/kube-system/sa/admin"), "{err}");
    assert!(
        err.to_string().contains("only obtain its own identity"),
        "{err}"
    );
}

#[test]
fn caller_of_a_foreign_trust_domain_is_refused() {
    let pki = Pki::new(TD, "east");
    let authority = pki.authority(LeafPolicy::default());
    let foreign = isthmus_identity::SpiffeId::new("evil.example", "default", "reviews").unwrap();
    let (_k, csr) = csr_for(&foreign.to_uri());
    let err = authority.sign_csr(&csr, &foreign, None).unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
}

#[test]
fn malformed_csr_and_pem_are_refused() {
    let pki = Pki::new(TD, "east");
    let authority = pki.authority(LeafPolicy::default());
    let me = id("default", "reviews");
    for bad in [
        "",
        "not a pem",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let err = authority.sign_csr(bad, &me, None).unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{bad:?}: {err}");
    }
    // A CSR whose signature does not match its key (tampered request).
    let (_k, csr) = csr_for(&me.to_uri());
    let mut der_bytes =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
    let last = der_bytes.len() - 3;
    der_bytes[last] ^= 0x55;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der_bytes));
    let err = authority.sign_csr(&tampered, &me, None).unwrap_err();
    assert!(matches!(err, CaError::BadCsr(_)), "{err}");

    // A CSR asking to be a CA.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_csr = params.serialize_request(&key).unwrap().pem().unwrap();
    assert!(matches!(
        authority.sign_csr(&ca_csr, &me, None).unwrap_err(),
        CaError::CsrRequestsCa | CaError::BadCsr(_)
    ));

    // Malformed PEM for the bundle and for the CA itself.
    let err = TrustBundle::from_pem("garbage", "bundle.pem").unwrap_err();
    assert!(err.to_string().contains("bundle.pem"), "{err}");
    let err = TrustBundle::from_pem(
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        "bundle.pem",
    )
    .unwrap_err();
    assert!(err.to_string().contains("bundle.pem"), "{err}");
    let mut broken = pki.intermediate.clone();
    broken.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned();
    let err = isthmus_identity::Authority::new(
        &broken,
        &pki.chain_pem,
        &pki.root.cert_pem,
        TD,
        LeafPolicy::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
    // Plug-in files from different runs do not fit together.
    let other = Pki::new(TD, "west");
    let err = isthmus_identity::Authority::new(
        &pki.intermediate,
        &pki.intermediate.cert_pem,
        &other.root.cert_pem,
        TD,
        LeafPolicy::default(),
    )
    .unwrap_err();
    assert!(matches!(err, CaError::BrokenChain(_)), "{err}");
    // A leaf is not accepted as a trust anchor.
    let chain = issue_leaf(&pki, "default", "reviews");
    assert!(matches!(
        TrustBundle::from_pem(&chain[0], "bundle.pem").unwrap_err(),
        CaError::NotCa { .. }
    ));
}

#[test]
fn requested_lifetime_is_honoured_and_capped() {
    let pki = Pki::new(TD, "east");
    let authority = pki.authority(LeafPolicy {
        default_lifetime: Duration::from_secs(3600),
        max_lifetime: Duration::from_secs(7200),
    });
    let me = id("default", "reviews");
    let lifetime_of = |requested| {
        let (_k, csr) = csr_for(&me.to_uri());
        let leaf = authority.sign_csr(&csr, &me, requested).unwrap();
        let d = der(&leaf.chain_pem[0]);
        let (_, c) = X509Certificate::from_der(&d).unwrap();
        c.validity().not_after.timestamp() - c.validity().not_before.timestamp() - 60
    };
    assert_eq!(lifetime_of(None), 3600);
    assert_eq!(lifetime_of(Some(Duration::from_secs(600))), 600);
    assert_eq!(lifetime_of(Some(Duration::from_secs(86400))), 7200);
}

#[test]
fn cli_writes_istio_plugin_files_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("root");
    let east = dir.path().join("east");
    let mut out = Vec::new();
    isthmus_identity::run(
        CaCommand::Init {
            out: root_dir.clone(),
            algorithm: KeyAlgorithm::EcdsaP256,
            key: None,
            common_name: "Test Root".to_owned(),
            organization: "Test Org".to_owned(),
            validity_days: 30,
            force: false,
        },
        &mut out,
    )
    .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root_dir.join("root-key.pem")), 0o600);

    // A second init must not destroy the existing root key.
    let before = std::fs::read(root_dir.join("root-key.pem")).unwrap();
    let err = isthmus_identity::run(
        CaCommand::Init {
            out: root_dir.clone(),
            algorithm: KeyAlgorithm::EcdsaP256,
            key: None,
            common_name: "x".to_owned(),
            organization: "x".to_owned(),
            validity_days: 30,
            force: false,
        },
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(err, CaError::Exists { .. }), "{err}");
    assert_eq!(
        before,
        std::fs::read(root_dir.join("root-key.pem")).unwrap()
    );

    isthmus_identity::run(
        CaCommand::Intermediate {
            root_dir: root_dir.clone(),
            cluster: "east".to_owned(),
            out: east.clone(),
            trust_domain: TD.to_owned(),
            algorithm: KeyAlgorithm::EcdsaP256,
            key: None,
            validity_days: 10,
            also_trust: Vec::new(),
            force: false,
        },
        &mut out,
    )
    .unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(east.join(f).exists(), "{f} missing");
    }
    assert_eq!(mode(&east.join("ca-key.pem")), 0o600);
    let chain = std::fs::read_to_string(east.join("cert-chain.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);

    // The files load as an authority whose leaves openssl accepts.
    let authority =
        isthmus_identity::files::load_authority(&east, TD, LeafPolicy::default()).unwrap();
    let me = id("default", "reviews");
    let (_k, csr) = csr_for(&me.to_uri());
    let leaf = authority.sign_csr(&csr, &me, None).unwrap();
    let root_pem = std::fs::read_to_string(east.join("root-cert.pem")).unwrap();
    let ca_pem = std::fs::read_to_string(east.join("ca-cert.pem")).unwrap();
    let (ok, text) = openssl_verify(dir.path(), &root_pem, &ca_pem, &leaf.chain_pem[0]);
    assert!(ok, "{text}");

    // inspect prints the chain, SANs, validity and key type.
    std::fs::write(dir.path().join("leaf-chain.pem"), leaf.chain_pem.concat()).unwrap();
    let mut printed = Vec::new();
    isthmus_identity::run(
        CaCommand::Inspect {
            file: dir.path().join("leaf-chain.pem"),
        },
        &mut printed,
    )
    .unwrap();
    let text = String::from_utf8(printed).unwrap();
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/default/sa/reviews"),
        "{text}"
    );
    assert!(text.contains("ECDSA P-256"), "{text}");
    assert!(text.contains("CA:            yes, path length 0"), "{text}");
    assert!(
        text.contains("certificate #2 (signature verified)"),
        "{text}"
    );
    assert!(
        text.contains("self-signed root, signature verified"),
        "{text}"
    );
    assert!(text.contains("(valid)"), "{text}");

    // A missing file is named in the error.
    let err = isthmus_identity::run(
        CaCommand::Inspect {
            file: dir.path().join("nope.pem"),
        },
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[test]
fn weak_rsa_csr_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("weak.pem");
    let csr = dir.path().join("weak.csr");
    let gen = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(gen.status.success());
    let req = Command::new("openssl")
        .args(["req", "-new", "-subj", "/O=test", "-addext"])
        .arg("subjectAltName=URI:spiffe://cluster.local/ns/default/sa/reviews")
        .arg("-key")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(
        req.status.success(),
        "{}",
        String::from_utf8_lossy(&req.stderr)
    );
    let pki = Pki::new(TD, "east");
    let err = pki
        .authority(LeafPolicy::default())
        .sign_csr(
            &std::fs::read_to_string(&csr).unwrap(),
            &id("default", "reviews"),
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("1024 bits"), "{err}");
}

#[test]
fn csr_made_by_openssl_is_signed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ec.pem");
    let csr = dir.path().join("ec.csr");
    let gen = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(gen.status.success());
    let req = Command::new("openssl")
        .args(["req", "-new", "-subj", "/O=cluster.local", "-addext"])
        .arg("subjectAltName=URI:spiffe://cluster.local/ns/default/sa/reviews")
        .arg("-key")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(
        req.status.success(),
        "{}",
        String::from_utf8_lossy(&req.stderr)
    );
    let pki = Pki::new(TD, "east");
    let leaf = pki
        .authority(LeafPolicy::default())
        .sign_csr(
            &std::fs::read_to_string(&csr).unwrap(),
            &id("default", "reviews"),
            None,
        )
        .unwrap();
    let (ok, text) = openssl_verify(
        dir.path(),
        &pki.root.cert_pem,
        &leaf.chain_pem[1],
        &leaf.chain_pem[0],
    );
    assert!(ok, "{text}");
}
