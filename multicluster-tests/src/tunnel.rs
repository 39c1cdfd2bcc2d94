//! The east-west gateway's identity and QUIC tunnel in the harness.
//!
//! Every east-west gateway gets its own certificate (CSR with a bootstrap
//! token for `istio-system/istio-eastwestgateway`): it authenticates to the
//! control plane's TLS xDS port with it and, with [`ClusterSpec::tunnel`],
//! serves the QUIC tunnel. The tunnel binds `spare_ip(100):15443/udp` and a
//! [`UdpFaultProxy`] on the gateway's own `15443/udp` forwards to it, so a
//! test can block UDP to the gateway (cut the proxy) while its TCP
//! passthrough on `15443/tcp` (the fallback) stays reachable. The cluster
//! publishes `gateways.eastWestQuic` = its east-west address and lists
//! every peer with `transport: quic`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::cluster::{Cluster, Launch};
use crate::error::{io, HarnessError};
use crate::process::Spec;
use crate::spec::{Block, ClusterSpec, EASTWEST_PORT};
use crate::udpproxy::UdpFaultProxy;

pub const NAMESPACE: &str = "istio-system";
pub const SERVICE_ACCOUNT: &str = "istio-eastwestgateway";

/// Where the tunnel of a cluster's east-west gateway really listens.
pub fn tunnel_bind(block: Block) -> SocketAddr {
    SocketAddr::new(block.spare_ip(100), EASTWEST_PORT)
}

fn token_file(dir: &Path) -> PathBuf {
    dir.join("token-eastwest")
}

/// Adds the east-west gateway's bootstrap token to the cluster's token
/// table (after `setup::write_cluster` wrote it) and its own token file.
pub fn write_eastwest_token(
    dir: &Path,
    spec: &ClusterSpec,
    secret: &str,
) -> Result<(), HarnessError> {
    let token = format!("{}-{SERVICE_ACCOUNT}-{secret}", spec.name);
    let tokens = dir.join("tokens");
    let mut all = std::fs::read_to_string(&tokens).map_err(io("cannot read", tokens.clone()))?;
    all.push_str(&format!("{token} {NAMESPACE}/{SERVICE_ACCOUNT}\n"));
    std::fs::write(&tokens, all).map_err(io("cannot write", tokens.clone()))?;
    let own = token_file(dir);
    std::fs::write(&own, token).map_err(io("cannot write", own.clone()))
}

/// The MeshConfig lines of a tunnel cluster: its QUIC address (under
/// `gateways:`) — the east-west address itself, on UDP.
pub fn mesh_gateway_lines(spec: &ClusterSpec, eastwest: SocketAddr) -> String {
    if spec.tunnel {
        format!("    eastWestQuic: {eastwest}\n")
    } else {
        String::new()
    }
}

/// The line after each peer of a tunnel cluster.
pub fn mesh_peer_lines(spec: &ClusterSpec) -> &'static str {
    if spec.tunnel {
        "      transport: quic\n"
    } else {
        ""
    }
}

/// The UDP link in front of a tunnel cluster's gateway (`None` otherwise).
pub async fn start_link(
    spec: &ClusterSpec,
    block: Block,
) -> Result<Option<UdpFaultProxy>, HarnessError> {
    if !spec.tunnel {
        return Ok(None);
    }
    Ok(Some(
        UdpFaultProxy::start(block.eastwest(), tunnel_bind(block)).await?,
    ))
}

impl Cluster {
    /// The east-west gateway's certificate (and tunnel) arguments.
    pub(crate) fn eastwest_identity_args(
        s: Spec,
        spec: &ClusterSpec,
        block: Block,
        dir: &Path,
        l: &Launch,
    ) -> Spec {
        let s = s
            .args([
                "--namespace",
                NAMESPACE,
                "--service-account",
                SERVICE_ACCOUNT,
            ])
            .arg("--ca")
            .arg(block.grpc().to_string())
            .arg("--root-cert")
            .arg(&l.root_cert)
            .arg("--token-file")
            .arg(token_file(dir));
        if spec.tunnel {
            s.arg("--tunnel-bind").arg(tunnel_bind(block).to_string())
        } else {
            s
        }
    }

    /// The UDP link carrying this cluster's QUIC tunnel traffic (cut it to
    /// block UDP); `None` unless the cluster runs the tunnel.
    pub fn tunnel_link(&self) -> Option<&UdpFaultProxy> {
        self.tunnel.as_ref()
    }
}
