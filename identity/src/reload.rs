//! Runtime reload of a cluster's plug-in CA directory (ca-cert.pem,
//! ca-key.pem, cert-chain.pem, root-cert.pem).
//!
//! One owner task watches the directory, waits until writes have settled
//! (an operator's `isthmus ca intermediate --force` renames four files in a
//! few milliseconds), validates the complete new set exactly as at start-up
//! ([`crate::files::load_authority`]: key matches certificate, CA
//! constraints, chain to a root of root-cert.pem, nothing expired) and only
//! then publishes the new [`Authority`] on the watch everyone signs from. A
//! bad or half-written set is refused with the file and reason, counted, and
//! the last good authority keeps signing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::ca::{Authority, CaError, LeafPolicy};
use crate::files::load_authority;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot watch the CA directory {dir}: {source} (check that it exists and that inotify watches are available)")]
    Watch { dir: PathBuf, source: notify::Error },
}

/// Counters of reload attempts, registered in the control plane's registry.
#[derive(Clone)]
pub struct ReloadMetrics {
    reloads: IntCounterVec,
    not_after: IntGauge,
}

impl ReloadMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "isthmus_ca_reloads_total",
                "Reloads of the plug-in CA directory by outcome (applied, refused).",
            ),
            &["outcome"],
        )?;
        let not_after = IntGauge::new(
            "isthmus_ca_intermediate_not_after_seconds",
            "Expiry (Unix seconds) of the intermediate the CA currently signs with.",
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(not_after.clone()))?;
        Ok(Self { reloads, not_after })
    }

    fn count(&self, outcome: &str) {
        self.reloads.with_label_values(&[outcome]).inc();
    }

    fn observe(&self, authority: &Authority) {
        self.not_after.set(authority.not_after().unix_timestamp());
    }
}

#[derive(Clone, Debug)]
pub struct ReloadConfig {
    pub dir: PathBuf,
    pub trust_domain: String,
    pub policy: LeafPolicy,
    /// Quiet time after the last change before the set is read.
    pub debounce: Duration,
}

impl ReloadConfig {
    pub fn new(dir: &Path, trust_domain: &str, policy: LeafPolicy) -> Self {
        Self {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.to_owned(),
            policy,
            debounce: Duration::from_millis(500),
        }
    }
}

/// The outcome of one look at the directory.
#[derive(Debug)]
pub enum Reloaded {
    /// A valid set that differs from the current one.
    Changed(Box<Authority>),
    /// Valid, and the same chain, roots and key as now.
    Unchanged,
}

/// Reads and validates the directory; `current` decides what "unchanged" is.
pub fn check_dir(cfg: &ReloadConfig, current: &Authority) -> Result<Reloaded, CaError> {
    let next = load_authority(&cfg.dir, &cfg.trust_domain, cfg.policy.clone())?;
    if next.ca_chain_pem() == current.ca_chain_pem() && next.roots_pem() == current.roots_pem() {
        Ok(Reloaded::Unchanged)
    } else {
        Ok(Reloaded::Changed(Box::new(next)))
    }
}

/// The running watcher; dropping it stops watching.
pub struct Reloader {
    task: JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `cfg.dir`; every valid change is sent on `authority`.
pub fn spawn(
    cfg: ReloadConfig,
    authority: watch::Sender<Arc<Authority>>,
    metrics: Option<ReloadMetrics>,
) -> Result<Reloader, ReloadError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Any event (or a watcher error) means: look again once things settle.
        let _ = tx.send(event.is_ok());
    })
    .map_err(|source| ReloadError::Watch {
        dir: cfg.dir.clone(),
        source,
    })?;
    watcher
        .watch(&cfg.dir, RecursiveMode::NonRecursive)
        .map_err(|source| ReloadError::Watch {
            dir: cfg.dir.clone(),
            source,
        })?;
    if let Some(m) = &metrics {
        m.observe(&authority.borrow());
    }
    let task = tokio::spawn(run(cfg, watcher, rx, authority, metrics));
    Ok(Reloader { task })
}

async fn run(
    cfg: ReloadConfig,
    // Kept alive by this task: dropping it ends the inotify watch.
    _watcher: notify::RecommendedWatcher,
    mut events: mpsc::UnboundedReceiver<bool>,
    authority: watch::Sender<Arc<Authority>>,
    metrics: Option<ReloadMetrics>,
) {
    while events.recv().await.is_some() {
        // Debounce: wait for a quiet period so a multi-file update is read whole.
        loop {
            match tokio::time::timeout(cfg.debounce, events.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let current = authority.borrow().clone();
        let job = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || check_dir(&cfg, &current))
        };
        match job.await {
            Ok(Ok(Reloaded::Unchanged)) => {}
            Ok(Ok(Reloaded::Changed(next))) => {
                info!(
                    dir = %cfg.dir.display(),
                    roots = next.roots_pem().len(),
                    intermediate_not_after = %next.not_after(),
                    "CA files changed; signing with the new intermediate"
                );
                if let Some(m) = &metrics {
                    m.count("applied");
                    m.observe(&next);
                }
                authority.send_replace(Arc::from(next));
            }
            Ok(Err(e)) => {
                warn!(
                    dir = %cfg.dir.display(),
                    error = %e,
                    "new CA files refused; still signing with the last good intermediate"
                );
                if let Some(m) = &metrics {
                    m.count("refused");
                }
            }
            Err(e) => {
                warn!(error = %e, "CA reload task failed; still signing with the last good intermediate");
                if let Some(m) = &metrics {
                    m.count("refused");
                }
            }
        }
    }
}
