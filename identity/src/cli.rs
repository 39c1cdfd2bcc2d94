//! `isthmus ca ...`: the subcommands; the binary only parses and calls [`run`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::ca::{
    create_intermediate, create_root, CaError, IntermediateOptions, KeyAlgorithm, RootOptions,
};
use crate::files;
use crate::inspect::describe_pem;

const DAY: u64 = 24 * 3600;

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a self-signed root CA (root-cert.pem, root-key.pem).
    Init {
        /// Directory to write root-cert.pem and root-key.pem (0600) into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::EcdsaP256)]
        algorithm: KeyAlgorithm,
        /// Use this existing PKCS#8 PEM key instead of generating one (needed for RSA).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, default_value = "Isthmus Root CA")]
        common_name: String,
        #[arg(long, default_value = "Isthmus")]
        organization: String,
        #[arg(long, default_value_t = 3650)]
        validity_days: u64,
        /// Replace existing files (the previous root key is lost).
        #[arg(long)]
        force: bool,
    },
    /// Issue a per-cluster intermediate signed by the root, written as Istio's
    /// plug-in CA files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    Intermediate {
        /// Directory holding root-cert.pem and root-key.pem.
        #[arg(long, default_value = ".")]
        root_dir: PathBuf,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = crate::spiffe::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::EcdsaP256)]
        algorithm: KeyAlgorithm,
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        validity_days: u64,
        #[arg(long)]
        force: bool,
    },
    /// Print the chain, SANs, validity and key type of the certificates in FILE.
    Inspect { file: PathBuf },
}

pub fn run(cmd: CaCommand, out: &mut dyn Write) -> Result<(), CaError> {
    let stdout = |e| CaError::write("standard output", e);
    match cmd {
        CaCommand::Init {
            out: dir,
            algorithm,
            key,
            common_name,
            organization,
            validity_days,
            force,
        } => {
            let opts = RootOptions {
                common_name,
                organization,
                validity: days(validity_days)?,
                algorithm,
                key_pem: key.as_deref().map(files::read_to_string).transpose()?,
            };
            let root = create_root(&opts)?;
            files::write_root(&dir, &root, force)?;
            writeln!(
                out,
                "wrote {} and {} (mode 0600)",
                dir.join(files::ROOT_CERT).display(),
                dir.join(files::ROOT_KEY).display()
            )
            .map_err(stdout)?;
        }
        CaCommand::Intermediate {
            root_dir,
            cluster,
            out: dir,
            trust_domain,
            algorithm,
            key,
            validity_days,
            force,
        } => {
            let root = files::read_root(&root_dir)?;
            let opts = IntermediateOptions {
                cluster_id: cluster.clone(),
                trust_domain,
                validity: days(validity_days)?,
                algorithm,
                key_pem: key.as_deref().map(files::read_to_string).transpose()?,
            };
            let intermediate = create_intermediate(&root, &opts)?;
            let paths = files::write_plugin(&dir, &intermediate, &root.cert_pem, force)?;
            writeln!(
                out,
                "wrote intermediate for cluster {cluster}: {}, {} (mode 0600), {}, {}",
                paths.ca_cert.display(),
                paths.ca_key.display(),
                paths.root_cert.display(),
                paths.cert_chain.display()
            )
            .map_err(stdout)?;
        }
        CaCommand::Inspect { file } => {
            let pem = files::read_to_string(&file)?;
            let text = describe_pem(&pem, &file.display().to_string())?;
            out.write_all(text.as_bytes()).map_err(stdout)?;
        }
    }
    Ok(())
}

fn days(n: u64) -> Result<Duration, CaError> {
    if n == 0 {
        return Err(CaError::BadValidity(
            "--validity-days must be at least 1".to_owned(),
        ));
    }
    n.checked_mul(DAY)
        .map(Duration::from_secs)
        .ok_or_else(|| CaError::BadValidity(format!("{n} days is out of range")))
}
