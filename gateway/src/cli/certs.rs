//! The proxy's certificate: CSR to the cluster CA, renewal, and the trust
//! the data plane and its control-plane connections use.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use isthmus_identity::{
    client::{CaClient, CaClientConfig},
    CertManager, CertManagerConfig, CertWatch, ChannelTls, PeerPolicy, SpiffeId, TrustBundle,
    CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT,
};
use rustls::pki_types::ServerName;
use tokio::sync::watch;

use super::GatewayArgs;
use crate::WorkloadCertificate;

/// The longest a proxy waits, at random, before renewing after the mesh
/// trust bundle changed (the whole cluster sees the change at once).
const RENEW_SPREAD: Duration = Duration::from_secs(10);

/// What the data plane gets from the certificate manager.
pub(super) struct Certificates {
    pub manager: CertManager,
    pub cert: watch::Receiver<Arc<WorkloadCertificate>>,
    /// Fed by the gateway with every `ROOTCA` it accepts.
    pub mesh_roots: watch::Sender<Arc<TrustBundle>>,
}

/// Starts the certificate manager and returns the data plane's view of it.
///
/// What the proxy trusts for its control plane (the CA and xDS over TLS) is
/// the roots of its latest certificate plus the mesh bundle pushed as
/// `ROOTCA`, and a change of that bundle triggers a renewal: during a root
/// rotation the control plane's certificate can move to the new root before
/// this proxy renewed (see `isthmus_identity::ca_trust`).
pub(super) async fn certificates(args: &GatewayArgs, ca: &str) -> anyhow::Result<Certificates> {
    let root_path = args
        .root_cert
        .as_ref()
        .context("--ca needs --root-cert (the root the CA's serving certificate chains to)")?;
    let root_pem = std::fs::read_to_string(root_path)
        .with_context(|| format!("reading --root-cert {}", root_path.display()))?;
    let bundle = TrustBundle::from_pem(&root_pem, &root_path.display().to_string())?;
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading --token-file {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let me = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account)?;
    let control = SpiffeId::new(
        &args.trust_domain,
        CONTROL_NAMESPACE,
        CONTROL_SERVICE_ACCOUNT,
    )?;
    let mut cfg = CertManagerConfig::new(me);
    cfg.requested_lifetime = Some(args.cert_lifetime);
    let ca = ca.to_string();
    let (mesh_tx, mesh_rx) = watch::channel(Arc::new(TrustBundle::new()));
    let mesh_for_ca = mesh_rx.clone();
    let manager = CertManager::start_with(cfg, move |own: CertWatch| {
        // --root-cert bootstraps trust in the CA; then the roots returned
        // with each certificate and the pushed ROOTCA.
        let trust = isthmus_identity::follow_control_plane_trust(bundle, own.clone(), mesh_for_ca);
        // Renewals authenticate with the current certificate; the first
        // request with the bootstrap token.
        let tls = isthmus_identity::tls::client_config(
            Some(own),
            trust,
            PeerPolicy::exactly([control]),
            &[b"h2"],
        );
        let mut client = CaClientConfig::new(ca);
        client.token = token;
        client.tls = tls.ok().map(|config| ChannelTls {
            config,
            server_name: ServerName::try_from("isthmus-control").expect("static name is valid"),
        });
        Arc::new(CaClient::new(client))
    })?;
    isthmus_identity::renew_on_bundle_change(
        mesh_rx.clone(),
        manager.renew_handle(),
        RENEW_SPREAD.min(args.cert_lifetime / 10),
    );
    let first = manager
        .wait_ready(Duration::from_secs(30))
        .await
        .context("no certificate from the CA")?;
    let (tx, rx) = watch::channel(Arc::new(to_gateway(&first, &mesh_rx.borrow())?));
    tokio::spawn(publish_gateway_cert(manager.subscribe(), mesh_rx, tx));
    Ok(Certificates {
        manager,
        cert: rx,
        mesh_roots: mesh_tx,
    })
}

/// Republishes the data plane's certificate when the certificate or the mesh
/// bundle changes (its trust bundle serves the xDS connection's reconnects).
async fn publish_gateway_cert(
    mut certs: CertWatch,
    mut mesh: watch::Receiver<Arc<TrustBundle>>,
    tx: watch::Sender<Arc<WorkloadCertificate>>,
) {
    let mut mesh_open = true;
    loop {
        tokio::select! {
            r = certs.changed() => if r.is_err() { return },
            r = mesh.changed(), if mesh_open => if r.is_err() { mesh_open = false; continue },
        }
        let Some(c) = certs.borrow_and_update().clone() else {
            continue;
        };
        let mesh_now = mesh.borrow_and_update().clone();
        match to_gateway(&c, &mesh_now) {
            Ok(wc) => {
                tx.send_replace(Arc::new(wc));
            }
            Err(e) => {
                tracing::warn!(error = %e, "rotated certificate unusable; keeping the previous one")
            }
        }
    }
}

fn to_gateway(
    c: &isthmus_identity::WorkloadCert,
    mesh: &TrustBundle,
) -> anyhow::Result<WorkloadCertificate> {
    let mut trust = TrustBundle::new();
    for r in c.roots() {
        trust.add_der(r.clone())?;
    }
    trust.merge(mesh);
    Ok(WorkloadCertificate::new(
        c.chain().to_vec(),
        c.private_key(),
        trust.certs().cloned().collect(),
    )?)
}
