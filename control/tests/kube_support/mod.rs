//! Shared by the process tests in Kubernetes mode (`kube_process.rs`,
//! `kube_join.rs`): a control plane started as `isthmus control --source
//! kubernetes` against the fake API server loaded with the fixtures, real
//! sidecars for its workloads, and polling helpers. The test crate declares
//! `mod fake_apiserver;` and `#[path = "peers/cluster.rs"] mod peers;`.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::fake_apiserver::FakeApiServer;
use crate::peers::{free_tcp_ports, free_udp, mesh_config, path_str, Ca, Ports, Proc, BIN};

pub const WAIT: Duration = Duration::from_secs(60);
/// The loopback prefix the fixtures are written with.
const FIXTURE_PREFIX: &str = "127.252.";
pub const APP_PORT: u16 = 9080;
/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 GET to `addr` with `host` and extra headers: (status, body).
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A loopback block `127.N.0.0/16` nobody uses now (the app port is free on
/// every workload address), so concurrent runs do not collide.
pub fn pick_block() -> u8 {
    let start = (std::process::id() % 4) as u8;
    for i in 0..4u8 {
        let n = 251 + (start + i) % 4;
        let free = (1..=4).all(|k| {
            [1u8, 2, 3].iter().all(|third| {
                std::net::TcpListener::bind((Ipv4Addr::new(127, n, *third, k), APP_PORT)).is_ok()
            })
        });
        if free {
            return n;
        }
    }
    panic!("no free loopback block 127.251-254.0.0/16 for the workloads");
}

pub struct Block(pub u8);

impl Block {
    pub fn prefix(&self) -> String {
        format!("127.{}.", self.0)
    }
    pub fn ip(&self, third: u8, k: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.0, third, k))
    }
    /// Pod IP: the sidecar's inbound listener and admin.
    pub fn pod(&self, k: u8) -> IpAddr {
        self.ip(1, k)
    }
    pub fn app(&self, k: u8) -> IpAddr {
        self.ip(2, k)
    }
    pub fn outbound(&self, k: u8) -> IpAddr {
        self.ip(3, k)
    }
}

/// Loads the fixtures into `server`, rewritten into `block`.
pub fn load_fixtures(server: &FakeApiServer, block: &Block) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube/process");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .expect("read fixture")
            .replace(FIXTURE_PREFIX, &block.prefix());
        let items: Vec<Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for item in items {
            server.put(item);
        }
    }
}

pub fn kubeconfig(server: &FakeApiServer, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: isthmus-control\n  user:\n    token: control-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: isthmus-control\ncurrent-context: fake\n",
        server.addr
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// A control plane in Kubernetes mode, its CA and its fake API server.
pub struct KubeControl {
    pub server: FakeApiServer,
    pub ca: Ca,
    pub ports: Ports,
    pub webhook: u16,
    pub proc: Proc,
    pub dir: PathBuf,
}

/// How a Kubernetes-mode control plane differs from the default one.
pub struct KubeOptions {
    /// A CA shared with other clusters (default: its own new root).
    pub ca: Option<Ca>,
    /// The MeshConfig `network` (default `net1`).
    pub network: String,
    /// More `isthmus control` arguments (`--join-token-file ...`).
    pub extra_args: Vec<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            ca: None,
            network: "net1".into(),
            extra_args: Vec::new(),
        }
    }
}

impl KubeControl {
    pub async fn start(dir: &Path, block: &Block, id: &str) -> KubeControl {
        Self::launch(dir, block, id, KubeOptions::default()).await
    }

    pub async fn launch(dir: &Path, block: &Block, id: &str, opts: KubeOptions) -> KubeControl {
        let server = FakeApiServer::start().await;
        load_fixtures(&server, block);
        let ca = opts.ca.unwrap_or_else(|| Ca::new(dir));
        let [grpc, plaintext, admin, webhook] = free_tcp_ports();
        let ports = Ports {
            id: id.to_string(),
            federation: free_udp(),
            grpc,
            plaintext,
            admin,
        };
        let home = dir.join(id);
        let config_dir = home.join("config");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        let mesh = mesh_config(&ports, &[]).replace(
            "  network: net1\n",
            &format!("  network: {}\n", opts.network),
        );
        std::fs::write(config_dir.join("mesh.yaml"), mesh).expect("mesh");
        let ca_dir = ca.intermediate(id, &home);
        let mut cmd = Command::new(BIN);
        cmd.args(["control", "--source", "kubernetes"])
            .args(["--kubeconfig", path_str(&kubeconfig(&server, dir))])
            .args(["--config-dir", path_str(&config_dir)])
            .args(["--ca-dir", path_str(&ca_dir)])
            .args(["--data-dir", path_str(&home.join("data"))])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", ports.grpc)])
            .args([
                "--plaintext-xds-addr",
                &format!("127.0.0.1:{}", ports.plaintext),
            ])
            .args(["--admin-addr", &format!("127.0.0.1:{}", ports.admin)])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .args([
                "--raft-tick",
                "50ms",
                "--lease-renew",
                "500ms",
                "--lease-ttl",
                "5s",
            ])
            .args(&opts.extra_args)
            .env("RUST_LOG", "info,isthmus_control=debug")
            .stdout(Stdio::null());
        let proc = Proc::spawn(&format!("control-{id}"), cmd, dir);
        let mut control = KubeControl {
            server,
            ca,
            ports,
            webhook,
            proc,
            dir: dir.to_path_buf(),
        };
        let admin = control.admin();
        wait_for("the control plane to be ready", WAIT, || {
            let alive = control.proc.exited();
            async move {
                if let Some(code) = alive {
                    panic!("the control plane exited with {code}");
                }
                get(admin, "localhost", "/readyz", &[])
                    .await
                    .filter(|(s, _)| *s == 200)
            }
        })
        .await;
        control
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.admin))
    }

    /// This cluster's record in the federation registry (`/debug/registry`).
    pub async fn registry_record(&self) -> Option<Value> {
        let (status, body) = get(self.admin(), "localhost", "/debug/registry", &[]).await?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["clusters"].get(&self.ports.id).cloned()
    }

    /// A sidecar for workload `k` (pod name, service account, labels), its
    /// echo app answering with `zone` = the pod name.
    pub fn workload(
        &self,
        block: &Block,
        k: u8,
        pod: &str,
        app: &str,
        version: &str,
    ) -> (Proc, Proc) {
        let account = format!("bookinfo-{app}");
        let token = format!("token-{pod}");
        self.server.add_token(
            &token,
            &format!("system:serviceaccount:shop:{account}"),
            &["istio-ca"],
        );
        let token_file = self.dir.join(format!("{pod}.token"));
        std::fs::write(&token_file, &token).expect("token file");
        let mut echo = Command::new(BIN);
        echo.args(["workload", "echo", "--listen"])
            .arg(SocketAddr::new(block.app(k), APP_PORT).to_string())
            .args(["--service", app, "--cluster", &self.ports.id, "--zone", pod])
            .args(["--version", version])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        let echo = Proc::spawn(&format!("echo-{pod}"), echo, &self.dir);
        let root = self.ca.root.join("root-cert.pem");
        let mut sidecar = Command::new(BIN);
        sidecar
            .args(["gateway", "--role", "sidecar", "--xds"])
            // xDS over mutual TLS, as the injected sidecars use it.
            .arg(format!("https://127.0.0.1:{}", self.ports.grpc))
            .args(["--ca", &format!("127.0.0.1:{}", self.ports.grpc)])
            .args(["--root-cert", path_str(&root)])
            .args(["--token-file", path_str(&token_file)])
            .args(["--ip", &block.pod(k).to_string(), "--pod", pod])
            .args(["--namespace", "shop", "--service-account", &account])
            .args(["--cluster-id", &self.ports.id, "--network", "net1"])
            .args(["--locality", "eu-west-1/eu-west-1a"])
            .args(["--label", &format!("app={app}")])
            .args(["--label", &format!("version={version}")])
            .args(["--admin", &SocketAddr::new(block.pod(k), 15000).to_string()])
            .args(["--app-address", &block.app(k).to_string()])
            .args(["--outbound-bind", &block.outbound(k).to_string()])
            .args(["--drain-time", "1s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null());
        let sidecar = Proc::spawn(&format!("sidecar-{pod}"), sidecar, &self.dir);
        (echo, sidecar)
    }
}
