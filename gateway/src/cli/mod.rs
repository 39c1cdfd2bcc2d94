//! The proxy's command line, shared by the `isthmus-gateway` binary and the
//! `isthmus gateway` subcommand: the data plane in one of its roles,
//! configured only by xDS; its certificate comes from the cluster CA by CSR
//! (the key never leaves this process) and rotates while connections stay up.
//!
//! This is the binaries' edge, so errors are `anyhow` here and typed below.

mod certs;
pub mod process;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use isthmus_identity::{SpiffeId, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT};
use serde_json::{json, Map, Value};

use crate::{GatewayConfig, LocalityName, NodeIdentity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Sidecar,
    EastWest,
    Ingress,
    Egress,
}

impl Role {
    fn metadata(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::EastWest => "east-west",
            Role::Ingress => "ingress",
            Role::Egress => "egress",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[arg(long, value_enum, default_value_t = Role::Sidecar)]
    pub role: Role,
    /// The control plane's xDS address: `https://HOST:15012` (mutual TLS
    /// with this proxy's certificate; needs --ca) or `http://HOST:15010`
    /// (plaintext, for trusted loopback).
    #[arg(long)]
    pub xds: String,
    /// The SPIFFE ID the control plane must present over `https://`;
    /// default `spiffe://TRUST_DOMAIN/ns/istio-system/sa/isthmus-control`.
    #[arg(long)]
    pub xds_identity: Option<String>,
    /// East-west gateway: serve the QUIC tunnel between gateways on this UDP
    /// address (by convention the passthrough port, `IP:15443`) and send
    /// clusters marked for the tunnel through it (TCP fallback when UDP is
    /// blocked). Needs --ca.
    #[arg(long)]
    pub tunnel_bind: Option<SocketAddr>,
    /// The cluster CA (`host:port`, TLS). Without it the proxy has no
    /// certificate, which only an east-west gateway (pure passthrough) can do.
    #[arg(long)]
    pub ca: Option<String>,
    /// Root certificate that the CA's serving certificate chains to.
    #[arg(long)]
    pub root_cert: Option<PathBuf>,
    /// Bootstrap token for the first CSR (one line).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// This proxy's (the workload's) IP.
    #[arg(long)]
    pub ip: IpAddr,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// Pod name in the node id; defaults to ROLE-IP.
    #[arg(long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub cluster_id: String,
    #[arg(long)]
    pub network: Option<String>,
    /// region/zone/subzone
    #[arg(long)]
    pub locality: Option<String>,
    /// Workload labels, `key=value`, repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Admin HTTP: /metrics, /healthz, /readyz, /config_dump.
    #[arg(long)]
    pub admin: SocketAddr,
    /// Sidecar without traffic capture: where outbound listeners bind.
    #[arg(long)]
    pub outbound_bind: Option<IpAddr>,
    /// Sidecar: where the application listens.
    #[arg(long)]
    pub app_address: Option<IpAddr>,
    /// Certificate lifetime asked of the CA.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_lifetime: Duration,
    /// How long open connections may finish after SIGTERM.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_time: Duration,
    /// Serve the sidecar DNS proxy here (UDP and TCP; Istio uses
    /// 127.0.0.1:15053): names of the control plane's name table are
    /// answered locally, others forwarded to --dns-upstream.
    #[arg(long)]
    pub dns_proxy: Option<SocketAddr>,
    /// Upstream DNS servers (repeatable) for DNS clusters (ServiceEntry
    /// resolution DNS) and the DNS proxy's forwarding; default: the
    /// nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream")]
    pub dns_upstream: Vec<SocketAddr>,
    /// Sidecar traffic capture (`INTERCEPTION_MODE`): `redirect` when
    /// iptables sends the pod's TCP to 15001/15006 (the injector's init
    /// container), `none` for explicit listeners.
    #[arg(long, value_enum, default_value_t = Interception::None)]
    pub interception: Interception,
    /// Bytes of unsent data the proxy queues per TCP connection
    /// (TCP_NOTSENT_LOWAT, both legs); 0 leaves the kernel's default.
    /// Small values keep a relay's transmits on its own core and its
    /// socket memory low; raise it for single flows of many Gbit/s.
    #[arg(long, default_value_t = crate::proxy::socket::DEFAULT_NOTSENT_LOWAT)]
    pub tcp_notsent_lowat: u32,
}

/// How the application's traffic reaches a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Interception {
    Redirect,
    None,
}

impl Interception {
    fn metadata(self) -> &'static str {
        match self {
            Interception::Redirect => "REDIRECT",
            Interception::None => "NONE",
        }
    }
}

/// Go-style durations as Istio writes them ("5s", "100ms", "1h30m", "1.5s").
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e} (expected e.g. \"5s\", \"1h30m\")"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: negative"))
}

fn node(args: &GatewayArgs) -> anyhow::Result<NodeIdentity> {
    let kind = if args.role == Role::Sidecar {
        "sidecar"
    } else {
        "router"
    };
    let pod = args
        .pod
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.role.metadata(), args.ip));
    let ns = &args.namespace;
    let id = format!("{kind}~{}~{pod}.{ns}~{ns}.svc.cluster.local", args.ip);
    let mut labels = Map::new();
    for l in &args.labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?}: expected key=value");
        };
        labels.insert(k.to_string(), Value::String(v.to_string()));
    }
    let mut meta = Map::new();
    meta.insert("CLUSTER_ID".into(), json!(args.cluster_id));
    meta.insert("NAMESPACE".into(), json!(ns));
    meta.insert("LABELS".into(), Value::Object(labels));
    meta.insert("SERVICE_ACCOUNT".into(), json!(args.service_account));
    meta.insert("ISTHMUS_ROLE".into(), json!(args.role.metadata()));
    meta.insert(
        "INTERCEPTION_MODE".into(),
        json!(args.interception.metadata()),
    );
    if let Some(n) = &args.network {
        meta.insert("NETWORK".into(), json!(n));
    }
    if let Some(a) = args.outbound_bind {
        meta.insert("ISTHMUS_OUTBOUND_BIND".into(), json!(a.to_string()));
    }
    if let Some(a) = args.app_address {
        meta.insert("ISTHMUS_APP_ADDRESS".into(), json!(a.to_string()));
    }
    let mut parts = args.locality.as_deref().unwrap_or("").split('/');
    let mut next = || parts.next().unwrap_or("").to_string();
    let locality = LocalityName {
        region: next(),
        zone: next(),
        sub_zone: next(),
    };
    Ok(NodeIdentity {
        id,
        cluster: args.cluster_id.clone(),
        metadata: meta,
        locality,
    })
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let node = node(&args)?;
    let mut config = GatewayConfig::new(args.xds.clone(), node, args.admin);
    config.drain_time = args.drain_time;
    config.tcp_notsent_lowat = args.tcp_notsent_lowat;
    config.dns_proxy = args.dns_proxy;
    config.resolver.upstream = args.dns_upstream.clone();
    config.xds_server_identity = Some(match &args.xds_identity {
        Some(id) => SpiffeId::parse(id)
            .with_context(|| format!("--xds-identity {id:?}"))?
            .to_uri(),
        None => SpiffeId::new(
            &args.trust_domain,
            CONTROL_NAMESPACE,
            CONTROL_SERVICE_ACCOUNT,
        )?
        .to_uri(),
    });
    if let Some(bind) = args.tunnel_bind {
        if args.role != Role::EastWest {
            bail!("--tunnel-bind is for --role east-west: the QUIC tunnel runs between east-west gateways");
        }
        if args.ca.is_none() {
            bail!("--tunnel-bind needs --ca: the tunnel is mutual TLS with the gateway's own certificate");
        }
        config.tunnel = Some(crate::tunnel::TunnelConfig { bind });
    }
    if args.xds.starts_with("https://") && args.ca.is_none() {
        bail!("--xds https://... needs --ca: the proxy authenticates to the control plane with its own certificate (or use a plaintext http:// xDS port)");
    }
    let _manager = match &args.ca {
        Some(ca) => {
            let certs = certs::certificates(&args, ca).await?;
            config.cert = Some(certs.cert);
            config.mesh_roots = Some(certs.mesh_roots);
            Some(certs.manager)
        }
        None if args.role == Role::Sidecar => {
            bail!(
                "a sidecar needs --ca: it terminates and originates mTLS with its own certificate"
            )
        }
        None => None,
    };
    crate::run(config).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_style() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("24h"), Duration::from_secs(24 * 3600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        for bad in ["", "5", "-1s", "soon"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
