//! `isthmus install`: print (or write as kustomize, or server-side apply)
//! the manifests for one cluster; `isthmus install join-token` makes the
//! token a new cluster passes as `--join`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use isthmus_control::install::{self, InstallOptions, JoinTicket};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct InstallArgs {
    #[command(subcommand)]
    pub command: Option<InstallCommand>,
    /// This cluster's id: unique in the federation, a DNS label.
    #[arg(long, required = true)]
    pub cluster: Option<String>,
    /// Its network: clusters on another network are reached through the east-west gateway.
    #[arg(long, required = true)]
    pub network: Option<String>,
    /// region/zone[/subzone]
    #[arg(long, required = true)]
    pub locality: Option<String>,
    /// The mesh's trust domain (SPIFFE), shared by every cluster.
    #[arg(long, required = true)]
    pub trust_domain: Option<String>,
    /// Join an existing federation with this token (`isthmus federation
    /// token create` on a member); rendered as the `isthmus-join` Secret.
    #[arg(long, requires = "federation_advertise")]
    pub join: Option<String>,
    /// HOST:PORT where the other clusters reach this cluster's federation
    /// node (its isthmus-federation Service, 15031/UDP).
    #[arg(long)]
    pub federation_advertise: Option<String>,
    /// The image that runs every role.
    #[arg(long)]
    pub image: Option<String>,
    /// HOST:PORT where other clusters reach this cluster's east-west gateway.
    #[arg(long)]
    pub east_west_address: Option<String>,
    #[arg(long, default_value_t = 2)]
    pub gateway_replicas: i32,
    /// Leave out Istio's CRDs (the cluster runs Istio's own).
    #[arg(long)]
    pub no_istio_crds: bool,
    /// Leave out the MCS API CRDs (the cluster already has them).
    #[arg(long)]
    pub no_mcs_crds: bool,
    /// Add a prometheus-operator ServiceMonitor and PodMonitor.
    #[arg(long)]
    pub service_monitor: bool,
    /// Write a kustomize base and this cluster's overlay under DIR instead of printing.
    #[arg(long, value_name = "DIR", conflicts_with = "apply")]
    pub kustomize: Option<PathBuf>,
    /// Server-side apply (field manager `isthmus`) to the current kubeconfig context.
    #[arg(long)]
    pub apply: bool,
    /// With --apply: take over fields other managers own.
    #[arg(long, requires = "apply")]
    pub force_conflicts: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum InstallCommand {
    /// Print a join token naming the federation's members.
    JoinToken {
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// A member, `ID=HOST:PORT` (its federation address), repeatable.
        #[arg(long = "peer", required = true)]
        peers: Vec<String>,
    },
}

fn options(args: &InstallArgs) -> anyhow::Result<InstallOptions> {
    let need =
        |v: &Option<String>, flag: &str| v.clone().with_context(|| format!("{flag} is required"));
    let mut opts = InstallOptions::new(
        &need(&args.cluster, "--cluster")?,
        &need(&args.network, "--network")?,
        &need(&args.locality, "--locality")?,
        &need(&args.trust_domain, "--trust-domain")?,
    )?;
    if let Some(token) = &args.join {
        opts = opts.with_join_token(token)?;
    }
    if let Some(addr) = &args.federation_advertise {
        opts = opts.with_federation_advertise(addr)?;
    }
    if let Some(addr) = &args.east_west_address {
        opts = opts.with_east_west_address(addr)?;
    }
    if let Some(image) = &args.image {
        opts.image = image.clone();
    }
    anyhow::ensure!(
        args.gateway_replicas >= 1,
        "--gateway-replicas must be at least 1"
    );
    opts.gateway_replicas = args.gateway_replicas;
    opts.istio_crds = !args.no_istio_crds;
    opts.mcs_crds = !args.no_mcs_crds;
    opts.service_monitor = args.service_monitor;
    Ok(opts)
}

pub async fn run(args: InstallArgs) -> anyhow::Result<()> {
    if let Some(InstallCommand::JoinToken {
        trust_domain,
        peers,
    }) = &args.command
    {
        println!(
            "{}",
            JoinTicket::from_peer_args(trust_domain, peers)?.encode()
        );
        return Ok(());
    }
    let opts = options(&args)?;
    if let Some(dir) = &args.kustomize {
        for path in install::kustomize::write(dir, &opts)? {
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    let docs = install::render_docs(&opts)?;
    if args.apply {
        let client = kube::Client::try_default().await.context(
            "no Kubernetes client configuration (KUBECONFIG, ~/.kube/config or in-cluster)",
        )?;
        install::apply::apply(client, &docs, args.force_conflicts, |d| {
            eprintln!("applied {d}")
        })
        .await?;
        return Ok(());
    }
    let yaml = install::to_yaml(&docs)?;
    std::io::stdout()
        .lock()
        .write_all(yaml.as_bytes())
        .context("writing to stdout")?;
    Ok(())
}
