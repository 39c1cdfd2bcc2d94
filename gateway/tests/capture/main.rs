//! Transparent capture end to end, in two network namespaces of its own:
//! `pod` (the workload, with the exact iptables rules the injector renders,
//! and the proxy running as UID 1337) and `net` (everything else: the
//! control plane's ADS, a remote workload behind its own sidecar, and a
//! server outside the registry), joined by a veth pair.
//!
//! The listeners, routes and passthrough clusters come from the control
//! plane's translation of tests/fixtures/capture/mesh.yaml for a sidecar with
//! `INTERCEPTION_MODE: REDIRECT`; only the outbound service cluster is
//! scripted (it points at the remote sidecar).
//!
//! Needs root (network namespaces, iptables); CI runs as root. Skips only
//! with `ISTHMUS_ALLOW_SKIP=1`. Every namespace it creates is deleted on drop,
//! and the proxy child is killed on drop, even when an assertion fails.
//!
//! Modules: `netns` (namespaces, veth, iptables, commands), `pod_proxy` (the
//! pod sidecar's scripted config and child process), `app` (the pod
//! application's clients), `peers` (servers and listeners in `net`),
//! `scenario` (the end-to-end flow) and `app_checks` (outbound, passthrough
//! and REGISTRY_ONLY checks). The two test entry points stay here so their
//! names (and the child's `--exact` re-run) are unchanged.

#[path = "../support/mod.rs"]
mod support;
#[path = "../translate_support/mod.rs"]
mod translate_support;

mod app;
mod app_checks;
mod netns;
mod peers;
mod pod_proxy;
mod scenario;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use netns::{in_netns, missing_prerequisite, setup_namespaces};
use scenario::scenario;
use support::{init, node};

const POD_IP: &str = "10.251.0.2";
const NET_IP: &str = "10.251.0.1";
const POD_ID: &str = "spiffe://cluster.local/ns/foo/sa/pod";
const REMOTE_ID: &str = "spiffe://cluster.local/ns/foo/sa/echo";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bar/sa/client";
const ECHO: &str = "outbound|7000||echo.foo.svc.cluster.local";
const CHILD_ENV: &str = "ISTHMUS_CAPTURE_CHILD";
const PROXY_UID: u32 = 1337;

#[test]
fn transparent_capture_in_network_namespaces() {
    if let Some(why) = missing_prerequisite() {
        if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("skipping transparent capture test: {why}");
            return;
        }
        panic!("transparent capture test cannot run: {why} (set ISTHMUS_ALLOW_SKIP=1 to skip)");
    }
    let tag = format!("{}", std::process::id() % 100_000);
    let namespaces = setup_namespaces(&tag).expect("network namespaces");
    let pod = namespaces.0[0].clone();
    let net = namespaces.0[1].clone();
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capture/mesh.yaml"),
    )
    .expect("fixture");
    let registry_only = format!(
        "{fixture}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: foo\nspec:\n  outboundTrafficPolicy:\n    mode: REGISTRY_ONLY\n"
    );
    let pod_for_net = pod.clone();
    // Everything outside the pod lives in `net`, on this thread's runtime.
    in_netns(&net, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(scenario(pod_for_net, fixture, registry_only));
    });
    drop(namespaces);
}

/// The proxy process of `transparent_capture_in_network_namespaces`: does
/// nothing unless started by it (with `ISTHMUS_CAPTURE_CHILD`).
#[test]
fn capture_proxy_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    init();
    let read = |name: &str| std::fs::read(dir.join(name)).expect("child input");
    let mut chain = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("chain{i}.der"));
        if !p.exists() {
            break;
        }
        chain.push(rustls::pki_types::CertificateDer::from(
            std::fs::read(p).expect("chain"),
        ));
    }
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        read("key.der"),
    ));
    let root = rustls::pki_types::CertificateDer::from(read("root.der"));
    let ads = String::from_utf8(read("ads")).expect("ads url");
    let wc = isthmus_gateway::WorkloadCertificate::new(chain, key, vec![root]).expect("cert");
    let (_tx, cert) = tokio::sync::watch::channel(Arc::new(wc));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut cfg = isthmus_gateway::GatewayConfig::new(
            ads,
            node(
                &format!("sidecar~{POD_IP}~pod-1.foo~foo.svc.cluster.local"),
                "sidecar",
            ),
            "127.0.0.1:0".parse().expect("addr"),
        );
        cfg.cert = Some(cert);
        let gw = isthmus_gateway::Gateway::start(cfg)
            .await
            .expect("proxy start");
        // Runs until the parent kills it.
        std::future::pending::<()>().await;
        drop(gw);
    });
}
