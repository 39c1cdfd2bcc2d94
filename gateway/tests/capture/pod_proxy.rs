//! The pod's sidecar: its configuration scripted from the control plane's
//! translation of the fixture, the files its child process reads, and the
//! child itself (this test binary re-run as UID 1337), killed on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, Proxy, TypeUrl};

use crate::support::ads::ScriptedAds;
use crate::support::http::RDS;
use crate::support::pki::Ca;
use crate::support::resources::{cla, mtls_cluster, named, rootca, CDS, EDS, LDS, SDS};
use crate::translate_support;
use crate::{CHILD_ENV, ECHO, POD_ID, POD_IP, PROXY_UID, REMOTE_ID};

/// The proxy process, killed on drop.
pub(crate) struct ProxyChild(Child);

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(yaml: &str) -> ConfigSnapshot {
    translate_support::config("mesh.yaml", yaml)
}

fn pod_proxy() -> Proxy {
    let id = format!("sidecar~{POD_IP}~pod-1.foo~foo.svc.cluster.local");
    let node = translate_support::sidecar_node(&id, "foo", "REDIRECT", &[("app", "pod")]);
    Proxy::from_node(Some(&node)).expect("proxy node")
}

/// Scripts the pod sidecar's whole configuration from the translation of
/// `yaml`, with the outbound `echo` cluster pointing at `remote`.
pub(crate) fn script_pod(ads: &ScriptedAds, yaml: &str, root_pem: &str, remote: SocketAddr) {
    let inputs = Inputs::new(
        Arc::new(config(yaml)),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    let proxy = pod_proxy();
    let gen = |t| -> Vec<(String, envoy_types::pb::google::protobuf::Any)> {
        generate(&inputs, &proxy, ProxyFlavor::Envoy, t, &Names::All)
            .into_iter()
            .map(|r| (r.name, r.body))
            .collect()
    };
    let mut clusters: Vec<_> = gen(TypeUrl::Cluster)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("outbound|"))
        .collect();
    clusters.push(named(
        ECHO,
        mtls_cluster(
            ECHO,
            "outbound_.7000_._.echo.foo.svc.cluster.local",
            &[REMOTE_ID],
        ),
    ));
    ads.set(SDS, vec![named("ROOTCA", rootca(root_pem))]);
    ads.set(EDS, vec![named(ECHO, cla(ECHO, &[(0, &[remote])]))]);
    ads.set(CDS, clusters);
    ads.set(RDS, gen(TypeUrl::RouteConfiguration));
    ads.set(LDS, gen(TypeUrl::Listener));
}

/// Files the proxy child reads: its certificate, key, root and ADS URL.
pub(crate) fn write_child_inputs(dir: &Path, ca: &Ca, root: &Ca, ads_url: &str) {
    let (chain, key) = ca.leaf(POD_ID);
    for (i, c) in chain.iter().enumerate() {
        std::fs::write(dir.join(format!("chain{i}.der")), c.as_ref()).expect("write chain");
    }
    std::fs::write(dir.join("key.der"), key.secret_der()).expect("write key");
    std::fs::write(dir.join("root.der"), root.der.as_ref()).expect("write root");
    std::fs::write(dir.join("ads"), ads_url).expect("write ads");
    // The child runs as UID 1337.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
}
/// Spawns this test binary again as the proxy, as UID 1337 (the owner the
/// iptables rules exclude), in the calling thread's network namespace.
pub(crate) fn spawn_proxy(dir: &Path) -> ProxyChild {
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args([
            "--exact",
            "capture_proxy_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .uid(PROXY_UID)
        .gid(PROXY_UID)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn proxy child");
    ProxyChild(child)
}
