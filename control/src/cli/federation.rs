//! `isthmus federation ...`: the registry's operator commands. The live
//! ones (status, join, leave, snapshot save) talk to a control plane's admin
//! port; the recovery ones work on a stopped node's data directory (see
//! docs/federation.md).

mod client;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use isthmus_control::app::federation::admin::{StatusView, CRC_HEADER};
use isthmus_control::app::federation::token::JoinToken;
use isthmus_control::app::{federation as fed, identity, ControlOptions};
use isthmus_federation::state::StateImage;
use isthmus_federation::{recovery, Metrics, NodeConfig};

/// Membership changes wait for a commit (and a leadership transfer).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(45);
const READ_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Subcommand)]
pub enum FederationCommand {
    /// Members, roles (voter/learner/witness), leader, term, commit and
    /// applied index, lag per peer, as one control plane sees them.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        admin: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Add a cluster (or witness) to the running federation as a learner; the
    /// leader promotes it to voter once caught up (up to --max-voters).
    /// A cluster started with --join-token-file does this by itself.
    Join {
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        admin: String,
        /// The new member's cluster id (its node id follows from it).
        #[arg(long)]
        name: String,
        /// Its federation address, HOST:PORT.
        #[arg(long)]
        address: String,
    },
    /// Remove a member with joint consensus; when it is the leader,
    /// leadership moves to another voter first.
    Leave {
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        admin: String,
        /// The member to remove: cluster id or numeric node id.
        #[arg(long)]
        node: String,
    },
    /// Registry snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Join tokens for `isthmus control --join-token-file`.
    #[command(subcommand)]
    Token(TokenCommand),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Write a consistent (ReadIndex) registry snapshot from a live control
    /// plane to FILE, checksummed and atomically; `isthmus federation
    /// restore FILE` seeds a new federation from it.
    Save {
        file: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        admin: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a join token: the trust domain, the root's fingerprint and seed
    /// members' federation addresses (no key, no secret).
    Create {
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// The federation's root certificate (root-cert.pem of any member's
        /// --ca-dir).
        #[arg(long)]
        root_cert: PathBuf,
        /// A seed member, `NAME=HOST:PORT` (its federation address), repeatable.
        #[arg(long = "seed", required = true)]
        seeds: Vec<String>,
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
        FederationCommand::Status { admin, output } => status(&admin, output).await,
        FederationCommand::Join {
            admin,
            name,
            address,
        } => {
            let q = format!(
                "/federation/join?name={}&address={}",
                encode(&name),
                encode(&address)
            );
            let answer = client::call(&admin, http::Method::POST, &q, CHANGE_TIMEOUT).await?;
            println!("{}", client::ok(answer, "join")?.text());
            Ok(())
        }
        FederationCommand::Leave { admin, node } => {
            let q = format!("/federation/leave?node={}", encode(&node));
            let answer = client::call(&admin, http::Method::POST, &q, CHANGE_TIMEOUT).await?;
            println!("{}", client::ok(answer, "leave")?.text());
            Ok(())
        }
        FederationCommand::Snapshot(SnapshotCommand::Save { file, admin }) => {
            snapshot_save(&admin, &file).await
        }
        FederationCommand::Token(TokenCommand::Create {
            trust_domain,
            root_cert,
            seeds,
        }) => {
            let pem = std::fs::read_to_string(&root_cert)
                .with_context(|| format!("reading --root-cert {}", root_cert.display()))?;
            println!("{}", JoinToken::new(&trust_domain, &pem, &seeds)?.encode());
            Ok(())
        }
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

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn status(admin: &str, output: Output) -> anyhow::Result<()> {
    let answer = client::call(admin, http::Method::GET, "/federation/status", READ_TIMEOUT).await?;
    let answer = client::ok(answer, "federation status")?;
    if output == Output::Json {
        println!("{}", answer.text());
        return Ok(());
    }
    let v: StatusView = serde_json::from_slice(&answer.body).with_context(|| {
        format!("{admin} answered something that is not a federation status; is the control plane the same version as this CLI?")
    })?;
    print!("{}", render_status(&v));
    Ok(())
}

/// The text `isthmus federation status` prints.
pub fn render_status(v: &StatusView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({}): {}; leader {} ({}), term {}",
        v.name, v.node, v.role, v.leader_name, v.leader, v.term
    );
    let _ = writeln!(
        out,
        "commit {} applied {} last {}; registry revision {}",
        v.commit, v.applied, v.last_index, v.revision
    );
    let _ = writeln!(
        out,
        "{:<20} {:>20} {:<8} {:>8}  replication",
        "member", "node id", "role", "lag"
    );
    for m in &v.members {
        let lag = m.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<20} {:>20} {:<8} {:>8}  {}",
            m.name,
            m.id,
            m.role,
            lag,
            m.replication.as_deref().unwrap_or("-")
        );
    }
    if v.leader != v.node {
        let _ = writeln!(
            out,
            "(lag per peer is known on the leader only: ask {}'s control plane)",
            v.leader_name
        );
    }
    out
}

/// Fetches a consistent image, checks its CRC against the server's, and
/// writes it in the checksummed snapshot file format, atomically.
async fn snapshot_save(admin: &str, file: &Path) -> anyhow::Result<()> {
    let answer = client::call(
        admin,
        http::Method::GET,
        "/federation/snapshot",
        READ_TIMEOUT,
    )
    .await?;
    let answer = client::ok(answer, "snapshot save")?;
    let sent = answer
        .headers
        .get(CRC_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u32::from_str_radix(v, 16).ok())
        .with_context(|| format!("the answer carries no {CRC_HEADER} checksum; is the control plane the same version as this CLI?"))?;
    let got = recovery::checksum(&answer.body);
    anyhow::ensure!(
        got == sent,
        "the snapshot arrived damaged (checksum {got:08x}, the control plane sent {sent:08x}); try again"
    );
    let image: StateImage = serde_json::from_slice(&answer.body)
        .context("the snapshot does not decode as a registry image")?;
    let saved = recovery::save_image(&image, file)?;
    println!(
        "saved registry revision {} (applied index {}, {} clusters) to {}",
        saved.revision,
        saved.applied_index,
        saved.clusters,
        file.display()
    );
    Ok(())
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
