//! `isthmus ca ...`: the subcommands; the binary only parses and calls [`run`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ca::{
    create_intermediate, create_root, Authority, CaError, CaMaterial, IntermediateOptions,
    KeyAlgorithm, LeafPolicy, RootOptions,
};
use crate::files;
use crate::inspect::describe_pem;
use crate::pem::{cert_to_pem, certs_from_pem};

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
        /// Also trust the roots in this PEM file (repeatable): root-cert.pem
        /// then holds the new root and these, for a root rotation.
        #[arg(long = "also-trust", value_name = "FILE")]
        also_trust: Vec<PathBuf>,
        /// Replace existing files (needed to re-issue into a live directory;
        /// a running control plane reloads them).
        #[arg(long)]
        force: bool,
    },
    /// Add roots to or remove roots from the trust bundle (root-cert.pem) of
    /// a plug-in directory; the root that signs the directory's intermediate
    /// cannot be removed.
    Bundle {
        /// The plug-in directory (ca-cert.pem, cert-chain.pem, root-cert.pem).
        #[arg(long)]
        dir: PathBuf,
        /// Trust the roots in this PEM file too (repeatable).
        #[arg(long, value_name = "FILE")]
        add: Vec<PathBuf>,
        /// Stop trusting the roots in this PEM file (repeatable).
        #[arg(long, value_name = "FILE")]
        remove: Vec<PathBuf>,
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
            also_trust,
            force,
        } => {
            let root = files::read_root(&root_dir)?;
            let mut sources = vec![(
                root_dir.join(files::ROOT_CERT).display().to_string(),
                root.cert_pem.clone(),
            )];
            for p in &also_trust {
                sources.push((p.display().to_string(), files::read_to_string(p)?));
            }
            let bundle = files::bundle_pem(sources.iter().map(|(w, p)| (w.as_str(), p.as_str())))?;
            let opts = IntermediateOptions {
                cluster_id: cluster.clone(),
                trust_domain,
                validity: days(validity_days)?,
                algorithm,
                key_pem: key.as_deref().map(files::read_to_string).transpose()?,
            };
            let intermediate = create_intermediate(&root, &opts)?;
            let paths = files::write_plugin_with_bundle(
                &dir,
                &intermediate,
                &root.cert_pem,
                &bundle,
                force,
            )?;
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
        CaCommand::Bundle { dir, add, remove } => {
            let text = change_bundle(&dir, &add, &remove)?;
            out.write_all(text.as_bytes()).map_err(stdout)?;
        }
        CaCommand::Inspect { file } => {
            let pem = files::read_to_string(&file)?;
            let text = describe_pem(&pem, &file.display().to_string())?;
            out.write_all(text.as_bytes()).map_err(stdout)?;
        }
    }
    Ok(())
}

/// Rewrites `dir`'s root-cert.pem with `add` and without `remove`, after
/// checking that the directory's intermediate still chains to a root in it.
fn change_bundle(dir: &Path, add: &[PathBuf], remove: &[PathBuf]) -> Result<String, CaError> {
    let paths = files::PluginPaths::in_dir(dir);
    let current = files::read_to_string(&paths.root_cert)?;
    let mut sources = vec![(paths.root_cert.display().to_string(), current)];
    for p in add {
        sources.push((p.display().to_string(), files::read_to_string(p)?));
    }
    let merged = files::bundle_pem(sources.iter().map(|(w, p)| (w.as_str(), p.as_str())))?;
    let mut dropped = Vec::new();
    for p in remove {
        for der in certs_from_pem(&files::read_to_string(p)?, &p.display().to_string())? {
            dropped.push(der.to_vec());
        }
    }
    let kept: Vec<_> = certs_from_pem(&merged, "merged bundle")?
        .into_iter()
        .filter(|d| !dropped.iter().any(|x| x.as_slice() == d.as_ref()))
        .collect();
    if kept.is_empty() {
        return Err(CaError::BrokenChain(
            "the change would leave root-cert.pem without any root".to_owned(),
        ));
    }
    let next: String = kept.iter().map(|d| cert_to_pem(d)).collect();
    // Only the chain is checked here; the trust domain is irrelevant to it.
    let ca = CaMaterial {
        cert_pem: files::read_to_string(&paths.ca_cert)?,
        key_pem: files::read_to_string(&paths.ca_key)?,
    };
    let chain = files::read_to_string(&paths.cert_chain)?;
    Authority::new(
        &ca,
        &chain,
        &next,
        crate::spiffe::DEFAULT_TRUST_DOMAIN,
        LeafPolicy::default(),
    )
    .map_err(|e| match e {
        CaError::BrokenChain(reason) => CaError::BrokenChain(format!(
            "{reason}; the root that signs this directory's intermediate must stay trusted (re-issue the intermediate under the new root first)"
        )),
        other => other,
    })?;
    files::write_atomic(&paths.root_cert, next.as_bytes(), files::CERT_MODE)?;
    let mut text = format!(
        "wrote {} with {} root(s):\n",
        paths.root_cert.display(),
        kept.len()
    );
    for der in &kept {
        text.push_str(&format!("  {}\n", describe_subject(der)));
    }
    Ok(text)
}

fn describe_subject(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    match X509Certificate::from_der(der) {
        Ok((_, c)) => format!(
            "{} (sha256 {})",
            c.subject(),
            crate::bundle::Fingerprint::of(der)
        ),
        Err(_) => "unparseable certificate".to_owned(),
    }
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
