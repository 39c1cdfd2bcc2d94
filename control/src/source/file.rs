//! The file source: a task that owns the per-file "last good" state of a
//! directory tree of YAML files, watches it, and publishes a new snapshot
//! whenever the effective configuration changes.
//!
//! Per file: when every document is accepted, the file's resources are
//! exactly those documents (so deleting a document or the file removes its
//! resources). When any document is rejected, the file's accepted documents
//! replace their old versions and every other resource the file had before
//! stays as it was: a broken edit never removes or half-applies anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::parse::parse_text;
use super::Location;
use crate::analyze::{Code, Diagnostic, Severity};
use crate::config::ResourceKey;
use crate::store::{ConfigStore, StoredResource};

/// Quiet period after the last file event before re-reading.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Upper bound on how long a stream of events can postpone a reload, so
/// edits are picked up within a second even while a tool keeps writing.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Guards against symlink loops.
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("configuration path {path} does not exist or cannot be read: {source}")]
    RootUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {path} for changes (check inotify limits: fs.inotify.max_user_watches): {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("the initial load of the configuration files did not complete: {0}")]
    InitialLoad(#[from] tokio::task::JoinError),
}

/// A watched set of files and directories.
#[derive(Debug, Clone)]
pub struct FileSource {
    roots: Vec<PathBuf>,
    debounce: Duration,
}

/// Keeps the watcher task alive; dropping it stops watching.
#[derive(Debug)]
pub struct FileSourceHandle {
    task: JoinHandle<()>,
}

impl FileSourceHandle {
    /// Stops watching and waits for the task to end.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for FileSourceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileSource {
    /// `roots` are directories (read recursively) or single files.
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            debounce: DEFAULT_DEBOUNCE,
        }
    }

    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Loads every file, publishes the first snapshot into `store`, then
    /// keeps watching in a background task. Returns after the first
    /// snapshot is published.
    pub async fn start(self, store: ConfigStore) -> Result<FileSourceHandle, FileSourceError> {
        for root in &self.roots {
            std::fs::metadata(root).map_err(|source| FileSourceError::RootUnreadable {
                path: root.clone(),
                source,
            })?;
        }
        // Watch before the first read so no edit falls between the two.
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only when the task ended.
            let _ = tx.send(event);
        })
        .map_err(|source| FileSourceError::Watch {
            path: self.roots.first().cloned().unwrap_or_default(),
            source,
        })?;
        for root in &self.roots {
            let (path, mode) = if root.is_dir() {
                (root.clone(), RecursiveMode::Recursive)
            } else {
                // Editors replace files by rename; watch the directory.
                let parent = root
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                (parent.to_path_buf(), RecursiveMode::NonRecursive)
            };
            watcher
                .watch(&path, mode)
                .map_err(|source| FileSourceError::Watch { path, source })?;
        }
        let mut tracker = Tracker::new(self.roots.clone());
        tracker = tokio::task::spawn_blocking(move || {
            tracker.rescan();
            tracker
        })
        .await?;
        tracker.publish(&store);
        let task = tokio::spawn(watch_loop(tracker, store, rx, watcher, self.debounce));
        Ok(FileSourceHandle { task })
    }
}

async fn watch_loop(
    mut tracker: Tracker,
    store: ConfigStore,
    mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    _watcher: notify::RecommendedWatcher,
    debounce: Duration,
) {
    while let Some(event) = rx.recv().await {
        if !relevant(&event) {
            continue;
        }
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let wait = debounce.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(_)) if Instant::now() < deadline => continue,
                _ => break,
            }
        }
        let rescanned = tokio::task::spawn_blocking(move || {
            let changed = tracker.rescan();
            (tracker, changed)
        })
        .await;
        match rescanned {
            Ok((t, changed)) => {
                tracker = t;
                if changed {
                    let snap = tracker.publish(&store);
                    info!(
                        version = snap.version(),
                        resources = snap.len(),
                        errors = snap.errors().count(),
                        "configuration files changed; published a new snapshot"
                    );
                }
            }
            Err(e) => {
                // A panic while reading would lose the tracker; stop rather
                // than publish a state without the last good resources.
                warn!(error = %e, "configuration file reload failed; no longer watching for changes");
                return;
            }
        }
    }
}

fn relevant(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(e) => !matches!(e.kind, EventKind::Access(_)),
        Err(e) => {
            warn!(error = %e, "file watcher reported an error; re-reading all configuration files");
            true
        }
    }
}

#[derive(Debug, Default)]
struct FileState {
    text: Option<String>,
    good: Vec<(ResourceKey, StoredResource)>,
    diagnostics: Vec<Diagnostic>,
}

/// Owned by the watch task: what each file last contributed.
#[derive(Debug)]
struct Tracker {
    roots: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
    walk_errors: Vec<Diagnostic>,
}

impl Tracker {
    fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            files: BTreeMap::new(),
            walk_errors: Vec::new(),
        }
    }

    /// Re-reads the tree; returns whether anything changed.
    fn rescan(&mut self) -> bool {
        let (paths, walk_errors) = collect_yaml_files(&self.roots);
        let walk_errors: Vec<Diagnostic> = walk_errors
            .into_iter()
            .map(|(path, e)| {
                Diagnostic::new(
                    Code::Unreadable,
                    Location::new(Arc::new(path), 1, 1),
                    None,
                    format!("cannot read: {e}"),
                )
            })
            .collect();
        let mut changed = walk_errors != self.walk_errors;
        self.walk_errors = walk_errors;
        let before = self.files.len();
        self.files.retain(|path, _| {
            let keep = paths.contains(path);
            if !keep {
                info!(file = %path.display(), "configuration file removed; its resources are withdrawn");
            }
            keep
        });
        changed |= self.files.len() != before;
        for path in paths {
            changed |= self.refresh(path);
        }
        changed
    }

    fn refresh(&mut self, path: PathBuf) -> bool {
        let state = self.files.entry(path.clone()).or_default();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let diag = Diagnostic::new(
                    Code::Unreadable,
                    Location::new(Arc::new(path.clone()), 1, 1),
                    None,
                    format!("cannot read the file ({e}); its last good resources stay in force"),
                );
                if state.diagnostics == [diag.clone()] {
                    return false;
                }
                warn!("{diag}");
                state.diagnostics = vec![diag];
                state.text = None;
                return true;
            }
        };
        if state.text.as_deref() == Some(text.as_str()) {
            return false;
        }
        let docs = parse_text(&path, &text);
        let rejected = docs.iter().any(|d| d.has_errors());
        let mut good: Vec<(ResourceKey, StoredResource)> = docs
            .iter()
            .filter_map(|d| {
                let r = d.resource.clone()?;
                Some((
                    r.key(),
                    StoredResource {
                        resource: r,
                        location: d.location.clone(),
                    },
                ))
            })
            .collect();
        if rejected {
            for (key, old) in &state.good {
                if !good.iter().any(|(k, _)| k == key) {
                    warn!(file = %path.display(), resource = %key, "keeping the last good version of this resource until the file is fixed");
                    good.push((key.clone(), old.clone()));
                }
            }
        }
        let diagnostics: Vec<Diagnostic> = docs.into_iter().flat_map(|d| d.diagnostics).collect();
        for d in &diagnostics {
            match d.severity {
                Severity::Error => warn!("{d}"),
                Severity::Warning => warn!("{d}"),
                Severity::Info => info!("{d}"),
            }
        }
        debug!(file = %path.display(), resources = good.len(), "configuration file loaded");
        state.text = Some(text);
        state.good = good;
        state.diagnostics = diagnostics;
        true
    }

    fn publish(&self, store: &ConfigStore) -> Arc<crate::store::ConfigSnapshot> {
        let mut resources: BTreeMap<ResourceKey, StoredResource> = BTreeMap::new();
        let mut diagnostics = self.walk_errors.clone();
        for state in self.files.values() {
            diagnostics.extend(state.diagnostics.iter().cloned());
            for (key, stored) in &state.good {
                match resources.get(key) {
                    Some(first) => diagnostics.push(Diagnostic::new(
                        Code::DuplicateResource,
                        stored.location.clone(),
                        Some(key.to_string()),
                        format!(
                            "{key} is already defined at {}; this copy is ignored",
                            first.location
                        ),
                    )),
                    None => {
                        resources.insert(key.clone(), stored.clone());
                    }
                }
            }
        }
        store.publish(resources, diagnostics)
    }
}

fn is_yaml_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Every YAML file under `roots` (recursively, sorted, hidden entries and
/// non-YAML names skipped; a root named explicitly is always read), plus
/// the paths that could not be listed.
pub fn collect_yaml_files(roots: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for root in roots {
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => walk(root, 0, &mut files, &mut errors),
            Ok(_) => files.push(root.clone()),
            Err(e) => errors.push((root.clone(), e)),
        }
    }
    files.sort();
    files.dedup();
    (files, errors)
}

fn walk(
    dir: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<(PathBuf, std::io::Error)>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push((dir.to_path_buf(), e));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, depth + 1, files, errors),
            Ok(_) if is_yaml_name(&path) => files.push(path),
            Ok(_) => {}
            // A dangling symlink or a file deleted while listing.
            Err(_) => {}
        }
    }
}
