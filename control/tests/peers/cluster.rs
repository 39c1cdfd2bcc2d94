//! Real control planes for the xDS integration tests: `isthmus control`
//! processes with their own CA, config, data directory and ports, the gRPC
//! peer (Python grpcio) and the `isthmus` CLI. Every process is killed when
//! its guard drops, also when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_isthmus");

pub fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpc_xds_peer.py")
}

/// Fails (never skips) when gRPC's Python client is not installed: this
/// test is the proof that a real gRPC xDS client accepts our config.
pub fn require_grpcio() {
    let out = Command::new("python3")
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import grpc ({}); run `pip install grpcio` (CI installs it)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run python3 ({e}); install Python 3 and run `pip install grpcio`"),
    }
}

/// A child process, killed and reaped on drop. Its stderr goes to a file
/// whose tail is printed when the test fails.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let stderr = log_dir.join(format!("{name}.stderr"));
        let file = std::fs::File::create(&stderr).expect("create a log file in the temp dir");
        cmd.stderr(file).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stderr,
        }
    }

    pub fn take_stdout(&mut self) -> BufReader<ChildStdout> {
        BufReader::new(self.child.stdout.take().expect("stdout is piped"))
    }

    /// The last lines of its stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} stderr (tail) ----\n{}", self.name, self.log_tail());
        }
    }
}

/// A port nobody listens on right now. Control planes need their ports up
/// front (federation peers are configured by address), so they are picked
/// by binding port 0 and releasing it.
pub fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a TCP port")
}

/// `N` distinct free TCP ports, all held while they are chosen so that no
/// two of them can be the same port.
pub fn free_tcp_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a TCP port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local address").port())
}

pub fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind a UDP port")
}

/// Polls `f` until it returns `Some`, failing with `what` at the deadline.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GETs `url` (plain HTTP) and returns the body of a 2xx answer.
pub fn http_get(url: &str) -> Option<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<bytes::Bytes>>();
        let resp = client.get(url.parse().ok()?).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(String::from_utf8_lossy(&body).into_owned())
    })
}

/// The value of one Prometheus sample (`name{labels}` exactly as
/// exposed), 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn run_cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the isthmus binary")
}

/// One trust domain's root and per-cluster intermediates, made with `isthmus ca`.
pub struct Ca {
    pub root: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let root = dir.join("root");
        let out = run_cli(&["ca", "init", "--out", path_str(&root)]);
        assert!(
            out.status.success(),
            "isthmus ca init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ca { root }
    }

    pub fn intermediate(&self, cluster: &str, dir: &Path) -> PathBuf {
        let out_dir = dir.join(format!("ca-{cluster}"));
        let out = run_cli(&[
            "ca",
            "intermediate",
            "--root-dir",
            path_str(&self.root),
            "--cluster",
            cluster,
            "--out",
            path_str(&out_dir),
        ]);
        assert!(
            out.status.success(),
            "isthmus ca intermediate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out_dir
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A cluster's addresses, known before its control plane starts.
#[derive(Clone, Debug)]
pub struct Ports {
    pub id: String,
    pub federation: u16,
    pub grpc: u16,
    pub plaintext: u16,
    pub admin: u16,
}

impl Ports {
    pub fn pick(id: &str) -> Ports {
        Ports {
            id: id.to_string(),
            federation: free_udp(),
            grpc: free_tcp(),
            plaintext: free_tcp(),
            admin: free_tcp(),
        }
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    pub fn plaintext_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.plaintext))
    }
}

/// The MeshConfig of `me` in a federation of `all` (one network; `me`
/// may be in `all`, peers list only the others).
pub fn mesh_config(me: &Ports, all: &[&Ports]) -> String {
    let peers: String = all
        .iter()
        .filter(|p| p.id != me.id)
        .map(|p| {
            format!(
                "    - id: {}\n      address: 127.0.0.1:{}\n",
                p.id, p.federation
            )
        })
        .collect();
    let peers = if peers.is_empty() {
        "    peers: []\n".to_string()
    } else {
        format!("    peers:\n{peers}")
    };
    format!(
        r#"apiVersion: isthmus.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  clusterId: {id}
  network: net1
  exportAll: true
  locality:
    region: region1
    zone: zone-{id}
  federation:
    listen: 127.0.0.1:{fed}
{peers}"#,
        id = me.id,
        fed = me.federation,
    )
}

/// A running `isthmus control`.
pub struct ControlPlane {
    pub ports: Ports,
    pub config_dir: PathBuf,
    pub proc: Proc,
}

impl ControlPlane {
    /// Starts it with `config` (YAML documents) in its own config directory.
    pub fn start(ports: &Ports, ca: &Ca, dir: &Path, config: &str) -> ControlPlane {
        Self::start_with_args(ports, ca, dir, config, &[])
    }

    /// Like [`ControlPlane::start`], with more `isthmus control` arguments.
    pub fn start_with_args(
        ports: &Ports,
        ca: &Ca,
        dir: &Path,
        config: &str,
        extra_args: &[String],
    ) -> ControlPlane {
        let home = dir.join(&ports.id);
        let config_dir = home.join("config");
        std::fs::create_dir_all(&config_dir).expect("create the config dir");
        std::fs::write(config_dir.join("mesh.yaml"), config).expect("write config");
        let ca_dir = ca.intermediate(&ports.id, &home);
        let mut cmd = Command::new(BIN);
        cmd.args(["control", "--config-dir", path_str(&config_dir)])
            .args(["--ca-dir", path_str(&ca_dir)])
            .args(["--data-dir", path_str(&home.join("data"))])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", ports.grpc)])
            .args([
                "--plaintext-xds-addr",
                &format!("127.0.0.1:{}", ports.plaintext),
            ])
            .args(["--admin-addr", &format!("127.0.0.1:{}", ports.admin)])
            .args([
                "--raft-tick",
                "50ms",
                "--lease-renew",
                "500ms",
                "--lease-ttl",
                "5s",
            ])
            .args(extra_args)
            .env("RUST_LOG", "info,isthmus_xds=debug,isthmus_control=debug")
            .stdout(Stdio::null());
        let proc = Proc::spawn(&format!("control-{}", ports.id), cmd, dir);
        ControlPlane {
            ports: ports.clone(),
            config_dir,
            proc,
        }
    }

    /// `isthmus status -o json` against this control plane, once it answers.
    pub fn status(&mut self) -> Option<serde_json::Value> {
        if let Some(code) = self.proc.exited() {
            panic!(
                "{} exited with {code}:\n{}",
                self.proc.name,
                self.proc.log_tail()
            );
        }
        let out = run_cli(&["status", "--admin", &self.ports.admin_url(), "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let name = self.proc.name.clone();
        wait_for(&format!("{name}: {what}"), timeout, || {
            self.status().filter(|s| f(s))
        })
    }
}

/// The gRPC server behind a service: Python grpcio answering `name`.
pub fn grpc_server(name: &str, dir: &Path) -> (Proc, u16) {
    let mut cmd = Command::new("python3");
    cmd.arg(peer_script())
        .args(["server", "127.0.0.1:0", name])
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(&format!("grpc-server-{name}"), cmd, dir);
    let mut line = String::new();
    proc.take_stdout()
        .read_line(&mut line)
        .expect("read the server's first line");
    let port = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "grpc server did not say its port: {line:?}\n{}",
                proc.log_tail()
            )
        });
    (proc, port)
}

/// gRPC's xDS bootstrap for a proxyless client talking plaintext to `xds`.
pub fn grpc_bootstrap(xds: SocketAddr, node_id: &str, cluster: &str) -> String {
    serde_json::json!({
        "xds_servers": [{
            "server_uri": xds.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node_id,
            "metadata": {
                "GENERATOR": "grpc",
                "NAMESPACE": "default",
                "CLUSTER_ID": cluster,
            },
            "locality": {"region": "region1", "zone": format!("zone-{cluster}")},
        },
    })
    .to_string()
}
