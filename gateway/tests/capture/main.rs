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

mod support;
mod translate_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, Proxy, TypeUrl};
use support::ads::ScriptedAds;
use support::http::RDS;
use support::pki::Ca;
use support::resources::*;
use support::*;

const POD_IP: &str = "10.251.0.2";
const NET_IP: &str = "10.251.0.1";
const POD_ID: &str = "spiffe://cluster.local/ns/foo/sa/pod";
const REMOTE_ID: &str = "spiffe://cluster.local/ns/foo/sa/echo";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bar/sa/client";
const ECHO: &str = "outbound|7000||echo.foo.svc.cluster.local";
const CHILD_ENV: &str = "ISTHMUS_CAPTURE_CHILD";
const PROXY_UID: u32 = 1337;

/// Network namespaces deleted on drop (their veth goes with them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The proxy process, killed on drop.
struct ProxyChild(Child);

impl Drop for ProxyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{cmd:?}: writing stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Some("must run as root (network namespaces, iptables)".into());
    }
    for tool in ["ip", "iptables-restore"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "{tool} is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

/// Runs `f` on a thread inside network namespace `ns`; sockets it creates
/// (and processes it spawns) live in that namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

fn setup_namespaces(tag: &str) -> Result<Namespaces, String> {
    let pod = format!("isthmus-cap-{tag}-pod");
    let net = format!("isthmus-cap-{tag}-net");
    let mut guard = Namespaces(Vec::new());
    for ns in [&pod, &net] {
        run(&["ip", "netns", "add", ns], None)?;
        guard.0.push(ns.clone());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"], None)?;
    }
    let (vp, vn) = (format!("vcp{tag}"), format!("vcn{tag}"));
    run(
        &[
            "ip", "-n", &pod, "link", "add", &vp, "type", "veth", "peer", "name", &vn, "netns",
            &net,
        ],
        None,
    )?;
    run(
        &[
            "ip",
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{POD_IP}/24"),
            "dev",
            &vp,
        ],
        None,
    )?;
    run(
        &[
            "ip",
            "-n",
            &net,
            "addr",
            "add",
            &format!("{NET_IP}/24"),
            "dev",
            &vn,
        ],
        None,
    )?;
    run(&["ip", "-n", &pod, "link", "set", &vp, "up"], None)?;
    run(&["ip", "-n", &net, "link", "set", &vn, "up"], None)?;
    // Service addresses (10.96.0.0/12 style) are only routed, never owned.
    run(
        &["ip", "-n", &pod, "route", "add", "default", "via", NET_IP],
        None,
    )?;
    // The injector's init container rules, exactly as rendered for a pod
    // without capture annotations.
    let rules = isthmus_control::inject::capture::CaptureRules::from_annotations(&BTreeMap::new())
        .map_err(|e| e.to_string())?
        .iptables_restore();
    run(
        &["ip", "netns", "exec", &pod, "iptables-restore"],
        Some(&rules),
    )?;
    Ok(guard)
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
fn script_pod(ads: &ScriptedAds, yaml: &str, root_pem: &str, remote: SocketAddr) {
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
fn write_child_inputs(dir: &Path, ca: &Ca, root: &Ca, ads_url: &str) {
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

/// Blocking round trip from the current namespace: write, half-close, read
/// to the end.
fn roundtrip_std(to: SocketAddr, msg: &str) -> std::io::Result<String> {
    let mut s = StdStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Retries `f` until it returns `Some` or the deadline passes.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// From the pod namespace, as the application (not UID 1337).
fn app_roundtrip(pod: &str, to: &str, msg: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().expect("addr");
    let msg = msg.to_string();
    in_netns(pod, move || {
        roundtrip_std(to, &msg).map_err(|e| e.to_string())
    })
}

/// One HTTP/1.1 request; the response is read until the server closes
/// (`Connection: close`), without half-closing first.
fn app_http_get(pod: &str, to: &str, host: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().expect("addr");
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    in_netns(pod, move || {
        let get = || -> std::io::Result<String> {
            let mut s = StdStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(req.as_bytes())?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        };
        get().map_err(|e| e.to_string())
    })
}

fn plain_tcp_listener(
    name: &str,
    at: SocketAddr,
    cluster: &str,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
    Listener {
        name: name.into(),
        address: Some(addr(at)),
        filter_chains: vec![FilterChain {
            filters: vec![tcp_proxy_filter(cluster)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A minimal HTTP/1.1 server outside the registry: 200 "outside" to
/// anything, closing after each response; counts requests.
struct PlainHttp {
    hits: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PlainHttp {
    async fn start(at: SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpListener::bind(at).await.expect("bind http");
        let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = sock.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\noutside")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Self { hits, task }
    }

    fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for PlainHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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

async fn scenario(pod: String, fixture: String, registry_only: String) {
    init();
    let root = Ca::root();
    let inter = root.intermediate("cluster-a");
    let net_ip = |port: u16| -> SocketAddr { format!("{NET_IP}:{port}").parse().expect("addr") };

    // The remote workload: its sidecar (STRICT mTLS, accepts only the pod's
    // identity) in front of an echo server.
    let echo_app = Backend::start_on(net_ip(0), "echo").await;
    let remote_ads = ScriptedAds::start_on(net_ip(0)).await;
    remote_ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    remote_ads.set(
        CDS,
        vec![named("inbound|7000||", eds_cluster("inbound|7000||"))],
    );
    remote_ads.set(
        EDS,
        vec![named(
            "inbound|7000||",
            cla("inbound|7000||", &[(0, &[echo_app.addr])]),
        )],
    );
    remote_ads.set(
        LDS,
        vec![named(
            "virtualInbound",
            inbound_listener(
                "virtualInbound",
                net_ip(0),
                "inbound|7000||",
                &[POD_ID],
                false,
            ),
        )],
    );
    let (_rtx, remote_cert) = inter.workload(&root, REMOTE_ID);
    let remote = gateway(&remote_ads, "sidecar", Some(remote_cert)).await;
    assert!(remote.wait_ready(WAIT).await, "remote sidecar not ready");
    let remote_addr = remote
        .listener_address("virtualInbound")
        .expect("remote inbound bound");

    // A server outside the registry, and an HTTP one on a port the mesh
    // knows (8080) for the catch-all virtual host.
    let outside = Backend::start_on(net_ip(0), "outside").await;
    let outside_http = PlainHttp::start(net_ip(8080)).await;

    // The pod's sidecar: ADS here, the proxy a child process in `pod`.
    let ads = ScriptedAds::start_on(net_ip(0)).await;
    script_pod(&ads, &fixture, &root.pem, remote_addr);
    let dir = tempfile::tempdir().expect("tempdir");
    write_child_inputs(dir.path(), &inter, &root, &ads.url());
    let child_dir = dir.path().to_path_buf();
    let pod_ns = pod.clone();
    let _proxy = in_netns(&pod_ns, move || spawn_proxy(&child_dir));
    assert!(
        ads.wait_ack(LDS, WAIT * 2).await,
        "the pod's proxy never ACKed the captured listeners"
    );

    // The application in the pod: a plain echo on 127.0.0.1:9080 (inbound).
    let pod_app = pod.clone();
    std::thread::spawn(move || {
        in_netns(&pod_app, || {
            let l = std::net::TcpListener::bind("127.0.0.1:9080").expect("bind app");
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = Vec::new();
                    if s.read_to_end(&mut buf).is_ok() {
                        let mut out = b"pod-app:".to_vec();
                        out.extend_from_slice(&buf);
                        let _ = s.write_all(&out);
                    }
                });
            }
        })
    });

    let pod2 = pod.clone();
    tokio::task::spawn_blocking(move || outbound_and_passthrough(&pod2, outside.addr))
        .await
        .expect("outbound checks");

    // Inbound: a client sidecar in `net` originates mTLS to POD_IP:9080;
    // iptables sends it to 15006, where the chain for port 9080 terminates it.
    let client_ads = ScriptedAds::start_on(net_ip(0)).await;
    const TO_POD: &str = "outbound|9080||pod.foo.svc.cluster.local";
    let pod_app_addr: SocketAddr = format!("{POD_IP}:9080").parse().expect("addr");
    client_ads.set(SDS, vec![named("ROOTCA", rootca(&root.pem))]);
    client_ads.set(
        CDS,
        vec![named(
            TO_POD,
            mtls_cluster(
                TO_POD,
                "outbound_.9080_._.pod.foo.svc.cluster.local",
                &[POD_ID],
            ),
        )],
    );
    client_ads.set(
        EDS,
        vec![named(TO_POD, cla(TO_POD, &[(0, &[pod_app_addr])]))],
    );
    client_ads.set(
        LDS,
        vec![named(
            "to-pod",
            plain_tcp_listener("to-pod", net_ip(0), TO_POD),
        )],
    );
    let (_ctx, client_cert) = inter.workload(&root, CLIENT_ID);
    let client = gateway(&client_ads, "sidecar", Some(client_cert)).await;
    assert!(client.wait_ready(WAIT).await, "client sidecar not ready");
    let to_pod = client.listener_address("to-pod").expect("to-pod bound");
    let reply = eventually_reply(to_pod, "hello-inbound", "pod-app:").await;
    assert_eq!(reply, "pod-app:hello-inbound");
    // Plaintext to the same port is captured too, and STRICT refuses it.
    let plain = roundtrip(pod_app_addr, "plain").await;
    assert!(
        !plain.as_deref().unwrap_or("").starts_with("pod-app:"),
        "plaintext reached the app past STRICT mTLS: {plain:?}"
    );

    // REGISTRY_ONLY: the same proxy, the Sidecar's policy changed.
    let before = ads.version(LDS);
    script_pod(&ads, &registry_only, &root.pem, remote_addr);
    let deadline = Instant::now() + WAIT;
    while ads.version(LDS) == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ads.wait_ack(LDS, WAIT).await,
        "REGISTRY_ONLY listeners not ACKed"
    );
    assert!(
        ads.wait_ack(RDS, WAIT).await,
        "REGISTRY_ONLY routes not ACKed"
    );
    let pod3 = pod.clone();
    let hits_before = outside_http.hits();
    tokio::task::spawn_blocking(move || registry_only_checks(&pod3, outside.addr))
        .await
        .expect("registry-only checks");
    assert_eq!(
        outside_http.hits(),
        hits_before,
        "block_all must not forward to the unknown host"
    );
    drop(client);
    drop(remote);
}

/// As the application in the pod (outbound capture through 15001).
fn outbound_and_passthrough(pod: &str, outside: SocketAddr) {
    // A registry service by any address on its port: the proxy's listener
    // for 7000 originates mTLS to the remote sidecar, which only accepts
    // the pod's identity.
    let reply = eventually("captured TCP to the echo service", || {
        app_roundtrip(pod, "10.96.0.10:7000", "hello").and_then(|r| {
            if r == "echo:hello" {
                Ok(r)
            } else {
                Err(format!("unexpected reply {r:?}"))
            }
        })
    });
    assert_eq!(reply, "echo:hello");
    // ALLOW_ANY: an unknown destination passes through to where the app
    // was going. Had the proxy's own connection been captured again, it
    // would loop back into 15001 instead of reaching the server.
    let reply = eventually("passthrough to an unknown destination", || {
        app_roundtrip(pod, &outside.to_string(), "anyone").and_then(|r| {
            if r == "outside:anyone" {
                Ok(r)
            } else {
                Err(format!("unexpected reply {r:?}"))
            }
        })
    });
    assert_eq!(reply, "outside:anyone");
    // HTTP to an unknown host on a mesh HTTP port: allow_any → PassthroughCluster.
    let resp = eventually("allow_any HTTP passthrough", || {
        app_http_get(pod, &format!("{NET_IP}:8080"), "unknown.example").and_then(|r| {
            if r.starts_with("HTTP/1.1 200") {
                Ok(r)
            } else {
                Err(format!("unexpected response {r:?}"))
            }
        })
    });
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

fn registry_only_checks(pod: &str, outside: SocketAddr) {
    // TCP to an unknown destination: BlackHoleCluster closes it.
    eventually("REGISTRY_ONLY closes unknown TCP", || {
        match app_roundtrip(pod, &outside.to_string(), "blocked") {
            Ok(r) if r.is_empty() => Ok(()),
            Err(_) => Ok(()),
            Ok(r) => Err(format!("reached the unknown destination: {r:?}")),
        }
    });
    // HTTP to an unknown host: block_all answers 502.
    let resp = eventually("block_all 502", || {
        app_http_get(pod, &format!("{NET_IP}:8080"), "unknown.example").and_then(|r| {
            if r.starts_with("HTTP/1.1 502") {
                Ok(r)
            } else {
                Err(format!("unexpected response {r:?}"))
            }
        })
    });
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    // Registry services still work.
    let reply = eventually("captured TCP to the echo service (REGISTRY_ONLY)", || {
        app_roundtrip(pod, "10.96.0.10:7000", "again").and_then(|r| {
            if r == "echo:again" {
                Ok(r)
            } else {
                Err(format!("unexpected reply {r:?}"))
            }
        })
    });
    assert_eq!(reply, "echo:again");
}

/// Spawns this test binary again as the proxy, as UID 1337 (the owner the
/// iptables rules exclude), in the calling thread's network namespace.
fn spawn_proxy(dir: &Path) -> ProxyChild {
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
