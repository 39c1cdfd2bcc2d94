//! Runtime reload of the plug-in CA directory, multi-root bundles and the
//! `isthmus ca bundle` / `intermediate --also-trust` commands.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::ca::{create_root, RootOptions};
use isthmus_identity::cli::{run, CaCommand};
use isthmus_identity::files::{self, load_authority};
use isthmus_identity::manager::{AuthoritySigner, CertManager, CertManagerConfig};
use isthmus_identity::reload::{self, ReloadConfig, ReloadMetrics};
use isthmus_identity::{Authority, CaError, KeyAlgorithm, LeafPolicy, SpiffeId};
use tokio::sync::watch;

use common::{init_crypto, TD};

fn root_dir(dir: &Path, cn: &str) {
    let root = create_root(&RootOptions {
        common_name: cn.to_owned(),
        ..RootOptions::default()
    })
    .unwrap();
    files::write_root(dir, &root, false).unwrap();
}

fn intermediate(root: &Path, out: &Path, also_trust: Vec<std::path::PathBuf>, force: bool) {
    run(
        CaCommand::Intermediate {
            root_dir: root.to_path_buf(),
            cluster: "east".to_owned(),
            out: out.to_path_buf(),
            trust_domain: TD.to_owned(),
            algorithm: KeyAlgorithm::EcdsaP256,
            key: None,
            validity_days: 30,
            also_trust,
            force,
        },
        &mut Vec::new(),
    )
    .unwrap();
}

fn bundle(dir: &Path, add: &[&Path], remove: &[&Path]) -> Result<String, CaError> {
    let mut out = Vec::new();
    run(
        CaCommand::Bundle {
            dir: dir.to_path_buf(),
            add: add.iter().map(|p| p.to_path_buf()).collect(),
            remove: remove.iter().map(|p| p.to_path_buf()).collect(),
        },
        &mut out,
    )?;
    Ok(String::from_utf8(out).unwrap())
}

fn counter(registry: &prometheus::Registry, outcome: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "isthmus_ca_reloads_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "outcome" && l.value() == outcome)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ders(pems: &[String]) -> Vec<Vec<u8>> {
    pems.iter()
        .flat_map(|p| isthmus_identity::pem::certs_from_pem(p, "test").unwrap())
        .map(|d| d.to_vec())
        .collect()
}

#[tokio::test]
async fn reload_swaps_valid_sets_and_refuses_bad_ones() {
    init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r2, ca) = (
        tmp.path().join("r1"),
        tmp.path().join("r2"),
        tmp.path().join("ca"),
    );
    root_dir(&r1, "Root One");
    root_dir(&r2, "Root Two");
    intermediate(&r1, &ca, Vec::new(), false);
    let first = load_authority(&ca, TD, LeafPolicy::default()).unwrap();
    let first_intermediate = first.intermediate_pem().to_owned();
    let (tx, rx) = watch::channel(Arc::new(first));
    let registry = prometheus::Registry::new();
    let metrics = ReloadMetrics::new(&registry).unwrap();
    let mut cfg = ReloadConfig::new(&ca, TD, LeafPolicy::default());
    cfg.debounce = Duration::from_millis(100);
    let _reloader = reload::spawn(cfg, tx, Some(metrics)).unwrap();

    // The control plane's own certificate, renewed on demand after a swap.
    let me = SpiffeId::new(TD, "istio-system", "isthmus-control").unwrap();
    let certs = CertManager::start(
        CertManagerConfig::new(me.clone()),
        Arc::new(AuthoritySigner::new(rx.clone(), me)),
    )
    .unwrap();
    let cert0 = certs.wait_ready(Duration::from_secs(5)).await.unwrap();

    // A corrupt ca-key.pem is refused; the last good authority keeps signing.
    std::fs::write(
        ca.join(files::CA_KEY),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    wait_for("the corrupt key to be refused", || {
        counter(&registry, "refused") >= 1
    })
    .await;
    assert_eq!(rx.borrow().intermediate_pem(), first_intermediate);
    let mut watch_certs = certs.subscribe();
    watch_certs.borrow_and_update();
    certs.renew_now();
    watch_certs.changed().await.unwrap();
    let cert1 = watch_certs.borrow().clone().unwrap();
    assert_ne!(cert1.serial(), cert0.serial(), "signing continues");
    assert_eq!(counter(&registry, "applied"), 0);

    // Re-issued under R2 while still trusting R1: applied as a whole.
    intermediate(&r2, &ca, vec![r1.join(files::ROOT_CERT)], true);
    wait_for("the new intermediate to be applied", || {
        rx.borrow().intermediate_pem() != first_intermediate
    })
    .await;
    assert_eq!(counter(&registry, "applied"), 1);
    let now = rx.borrow().clone();
    assert_eq!(now.roots_pem().len(), 2, "root-cert.pem holds R2 and R1");
    let r2_der = ders(&[files::read_to_string(&r2.join(files::ROOT_CERT)).unwrap()]);
    assert_eq!(ders(&[now.root_pem().to_owned()]), r2_der, "signed by R2");
    certs.renew_now();
    watch_certs.changed().await.unwrap();
    let cert2 = watch_certs.borrow().clone().unwrap();
    // The leaf response carries both roots; the chain goes to R2.
    assert_eq!(cert2.roots().len(), 2);
    assert_eq!(cert2.chain().len(), 2, "leaf and intermediate");
    assert_eq!(
        cert2.chain()[1].as_ref(),
        ders(&[now.intermediate_pem().to_owned()])[0].as_slice()
    );

    // Half a set (a new certificate without its key) is refused too.
    let applied = counter(&registry, "applied");
    let refused = counter(&registry, "refused");
    let other = tmp.path().join("other");
    intermediate(&r2, &other, Vec::new(), false);
    std::fs::copy(other.join(files::CA_CERT), ca.join(files::CA_CERT)).unwrap();
    wait_for("the half-written set to be refused", || {
        counter(&registry, "refused") > refused
    })
    .await;
    assert_eq!(counter(&registry, "applied"), applied);
    assert_eq!(rx.borrow().intermediate_pem(), now.intermediate_pem());
    let err = load_authority(&ca, TD, LeafPolicy::default()).unwrap_err();
    assert!(
        err.to_string().contains("ca-cert.pem"),
        "the error names the file: {err}"
    );
}

#[test]
fn bundle_adds_and_retires_roots_but_keeps_the_signing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r2, ca) = (
        tmp.path().join("r1"),
        tmp.path().join("r2"),
        tmp.path().join("ca"),
    );
    root_dir(&r1, "Root One");
    root_dir(&r2, "Root Two");
    intermediate(&r1, &ca, Vec::new(), false);
    let (r1c, r2c) = (r1.join(files::ROOT_CERT), r2.join(files::ROOT_CERT));

    let out = bundle(&ca, &[&r2c], &[]).unwrap();
    assert!(out.contains("2 root(s)"), "{out}");
    let a = load_authority(&ca, TD, LeafPolicy::default()).unwrap();
    assert_eq!(a.roots_pem().len(), 2);
    // Adding twice is a no-op.
    assert!(bundle(&ca, &[&r2c], &[]).unwrap().contains("2 root(s)"));

    // R1 still signs the intermediate: it cannot be retired yet.
    let err = bundle(&ca, &[], &[&r1c]).unwrap_err();
    assert!(
        err.to_string().contains("must stay trusted"),
        "clear refusal: {err}"
    );
    assert_eq!(
        load_authority(&ca, TD, LeafPolicy::default())
            .unwrap()
            .roots_pem()
            .len(),
        2,
        "nothing written on refusal"
    );

    intermediate(&r2, &ca, vec![r1c.clone()], true);
    let out = bundle(&ca, &[], &[&r1c]).unwrap();
    assert!(
        out.contains("1 root(s)") && out.contains("Root Two"),
        "{out}"
    );
    let a: Authority = load_authority(&ca, TD, LeafPolicy::default()).unwrap();
    assert_eq!(a.roots_pem().len(), 1);
    assert_eq!(a.ca_chain_pem().len(), 2, "intermediate and R2 only");
    // Keys stay owner-only after a re-issue.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ca.join(files::CA_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn chain_to_a_root_missing_from_root_cert_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r2, ca) = (
        tmp.path().join("r1"),
        tmp.path().join("r2"),
        tmp.path().join("ca"),
    );
    root_dir(&r1, "Root One");
    root_dir(&r2, "Root Two");
    intermediate(&r1, &ca, Vec::new(), false);
    std::fs::copy(r2.join(files::ROOT_CERT), ca.join(files::ROOT_CERT)).unwrap();
    let err = load_authority(&ca, TD, LeafPolicy::default()).unwrap_err();
    assert!(
        err.to_string().contains("not in root-cert.pem"),
        "names the mismatch: {err}"
    );
}
