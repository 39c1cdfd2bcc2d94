//! `isthmus federation ...`: the registry's operator commands. The live
//! ones talk to a control plane's admin port; the recovery ones work on a
//! stopped node's data directory (see docs/federation.md).

use std::path::PathBuf;

use anyhow::Context;
use isthmus_control::app::{federation as fed, identity, ControlOptions};
use isthmus_federation::{recovery, Metrics, NodeConfig};

#[derive(Debug, clap::Subcommand)]
pub enum FederationCommand {
    /// Run a witness: a voting member with no cluster behind it, so that two
    /// clusters plus a witness in a third place survive losing either cluster.
    Witness(WitnessArgs),
    /// Seed an empty data directory from a saved registry image, as the only
    /// voter of a new federation (start `isthmus control` on it afterwards).
    Restore {
        /// A file written by `recovery::save` (checksummed).
        file: PathBuf,
        /// The control plane's --data-dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// The cluster (or witness) name that will own the data.
        #[arg(long)]
        cluster_id: String,
    },
    /// After permanent loss of quorum: turn this survivor's data into a new
    /// single-member federation that the others then re-join. Keeps every
    /// entry the survivor has, moves the old data to `<dir>.pre-recovery`.
    ForceNewCluster {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        cluster_id: String,
        /// Required: this discards the other members' view of the log.
        #[arg(long)]
        yes_i_lost_quorum: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct WitnessArgs {
    /// The witness's name; every cluster lists it among its federation peers.
    #[arg(long)]
    pub name: String,
    /// Plug-in CA files of an intermediate issued for this name
    /// (`isthmus ca intermediate --cluster NAME`).
    #[arg(long)]
    pub ca_dir: PathBuf,
    #[arg(long)]
    pub data_dir: PathBuf,
    /// UDP address of the federation port.
    #[arg(long)]
    pub listen: String,
    /// The other members, `NAME=HOST:PORT`, repeatable.
    #[arg(long = "peer", required = true)]
    pub peers: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

pub async fn run(cmd: FederationCommand) -> anyhow::Result<()> {
    match cmd {
        FederationCommand::Witness(args) => witness(args).await,
        FederationCommand::Restore {
            file,
            data_dir,
            cluster_id,
        } => {
            let image =
                recovery::load(&file).with_context(|| format!("reading {}", file.display()))?;
            let dir = ControlOptions::federation_dir(&data_dir);
            recovery::restore(&image, &dir, fed::node_id(&cluster_id))?;
            println!(
                "restored revision {} ({} clusters) into {}; start `isthmus control --data-dir {}` as {cluster_id}",
                image.revision,
                image.clusters.len(),
                dir.display(),
                data_dir.display()
            );
            Ok(())
        }
        FederationCommand::ForceNewCluster {
            data_dir,
            cluster_id,
            yes_i_lost_quorum,
        } => {
            let dir = ControlOptions::federation_dir(&data_dir);
            let image =
                recovery::force_new_federation(&dir, fed::node_id(&cluster_id), yes_i_lost_quorum)?;
            println!(
                "{} is now the only member of a new federation at revision {}; let the other clusters re-join it",
                cluster_id, image.revision
            );
            Ok(())
        }
    }
}

async fn witness(args: WitnessArgs) -> anyhow::Result<()> {
    let id = identity::load(&args.ca_dir, &args.trust_domain).await?;
    let peers: Vec<(String, String)> = args
        .peers
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .with_context(|| format!("--peer {p:?}: expected NAME=HOST:PORT"))
        })
        .collect::<anyhow::Result<_>>()?;
    let members = fed::Members {
        me: &args.name,
        listen: &args.listen,
        peers: peers
            .iter()
            .map(|(n, a)| (n.as_str(), a.as_str()))
            .collect(),
    };
    let (quic, voters) = fed::quic_config(
        &args.trust_domain,
        &members,
        id.certs.subscribe(),
        id.bundle.clone(),
    )?;
    let node = NodeConfig::witness(
        quic.id,
        ControlOptions::federation_dir(&args.data_dir),
        voters,
    );
    let metrics = Metrics::new(&prometheus::Registry::new())?;
    isthmus_federation::witness::run_witness(
        isthmus_federation::witness::WitnessConfig {
            node,
            quic,
            metrics,
        },
        super::shutdown_signal(),
    )
    .await?;
    Ok(())
}
