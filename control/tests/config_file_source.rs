//! The file source against a real directory: initial load, edits picked up,
//! broken edits rejected with the last good version kept, deletions.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_control::analyze::Code;
use isthmus_control::config::{Kind, Resource};
use isthmus_control::source::FileSource;
use isthmus_control::store::{ConfigSnapshot, ConfigStore};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(10);

const VS_V1: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts:
  - reviews
  http:
  - timeout: 1s
    route:
    - destination:
        host: reviews
";

const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
";

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and config management tools do, so the
    // watcher never sees a half-written file.
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for(
    rx: &mut watch::Receiver<Arc<ConfigSnapshot>>,
    what: &str,
    pred: impl Fn(&ConfigSnapshot) -> bool,
) -> Arc<ConfigSnapshot> {
    let result = tokio::time::timeout(DEADLINE, async {
        loop {
            let snap = rx.borrow_and_update().clone();
            if pred(&snap) {
                return snap;
            }
            rx.changed().await.expect("store dropped");
        }
    })
    .await;
    match result {
        Ok(s) => s,
        Err(_) => {
            let snap = rx.borrow().clone();
            panic!(
                "timed out waiting for: {what}; last snapshot v{} with {} resources, diagnostics {:#?}",
                snap.version(),
                snap.len(),
                snap.diagnostics()
            )
        }
    }
}

fn timeout_of(snap: &ConfigSnapshot) -> Option<String> {
    let vs = snap.get_by(Kind::VirtualService, "shop", "reviews")?;
    match vs.resource.as_ref() {
        Resource::VirtualService(o) => o.spec.http[0].timeout.as_ref().map(|d| d.to_string()),
        _ => None,
    }
}

#[tokio::test]
async fn watches_edits_keeps_last_good_and_drops_deleted_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reviews.yaml");
    write(&file, &format!("{VS_V1}---\n{DR}"));
    std::fs::write(dir.path().join("notes.txt"), "not configuration").unwrap();

    let store = ConfigStore::new();
    let mut rx = store.subscribe();
    let handle = FileSource::new(vec![dir.path().to_path_buf()])
        .with_debounce(Duration::from_millis(50))
        .start(store)
        .await
        .unwrap();

    // The initial load is published before start() returns.
    let first = rx.borrow_and_update().clone();
    assert_eq!(first.version(), 1);
    assert_eq!(first.len(), 2, "{:#?}", first.diagnostics());
    assert_eq!(timeout_of(&first).as_deref(), Some("1s"));
    assert!(!first.has_errors());
    let dr = first
        .get_by(Kind::DestinationRule, "shop", "reviews")
        .unwrap();
    assert_eq!(dr.location.line, 15);

    // A valid edit is picked up.
    write(
        &file,
        &format!("{}---\n{DR}", VS_V1.replace("timeout: 1s", "timeout: 2s")),
    );
    let snap = wait_for(&mut rx, "timeout 2s", |s| {
        timeout_of(s).as_deref() == Some("2s")
    })
    .await;
    assert!(snap.version() > first.version());
    assert!(!snap.has_errors());

    // A broken edit of the VirtualService (unknown field from a typo) is
    // rejected with its position; its last good version stays, and the
    // valid document beside it still applies.
    let broken_vs = VS_V1
        .replace("timeout: 1s", "timeout: 3s")
        .replace("        host: reviews", "        hots: reviews");
    let dr_v2 = DR
        .replace("name: v1", "name: v2")
        .replace("version: v1", "version: v2");
    write(&file, &format!("{broken_vs}---\n{dr_v2}"));
    let snap = wait_for(&mut rx, "an error for the broken document", |s| {
        s.has_errors()
    })
    .await;
    let err = snap.errors().next().unwrap();
    assert_eq!(err.code, Code::UnknownField, "{err}");
    assert_eq!(err.location.file.as_path(), file.as_path());
    assert_eq!((err.location.line, err.location.column), (13, 9), "{err}");
    assert!(err.message.contains("hots"), "{err}");
    assert_eq!(
        timeout_of(&snap).as_deref(),
        Some("2s"),
        "last good VirtualService stays"
    );
    match snap
        .get_by(Kind::DestinationRule, "shop", "reviews")
        .unwrap()
        .resource
        .as_ref()
    {
        Resource::DestinationRule(o) => assert_eq!(o.spec.subsets[0].name, "v2"),
        other => panic!("unexpected {other:?}"),
    }

    // A YAML syntax error keeps everything the file had.
    write(&file, "apiVersion: [unclosed\n");
    let snap = wait_for(&mut rx, "a syntax error", |s| {
        s.errors().any(|d| d.code == Code::YamlSyntax)
    })
    .await;
    assert_eq!(snap.len(), 2);
    assert_eq!(timeout_of(&snap).as_deref(), Some("2s"));

    // Fixing the file clears the errors.
    write(
        &file,
        &format!("{}---\n{DR}", VS_V1.replace("timeout: 1s", "timeout: 4s")),
    );
    let snap = wait_for(&mut rx, "the fixed file", |s| {
        !s.has_errors() && timeout_of(s).as_deref() == Some("4s")
    })
    .await;
    assert_eq!(snap.len(), 2);

    // New files in new subdirectories are found; foreign groups are skipped
    // without being errors.
    let sub = dir.path().join("team/exports");
    std::fs::create_dir_all(&sub).unwrap();
    write(
        &sub.join("export.yaml"),
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: reviews\n  namespace: shop\n---\napiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: m\nspec: {}\n",
    );
    let snap = wait_for(&mut rx, "the export in a new subdirectory", |s| {
        s.service_exports().count() == 1
    })
    .await;
    assert!(!snap.has_errors(), "{:#?}", snap.diagnostics());
    assert!(snap
        .diagnostics()
        .iter()
        .any(|d| d.code == Code::SkippedForeignGroup));

    // Deleting a file withdraws its resources.
    std::fs::remove_file(&file).unwrap();
    let snap = wait_for(&mut rx, "resources of the deleted file gone", |s| {
        s.get_by(Kind::VirtualService, "shop", "reviews").is_none()
    })
    .await;
    assert_eq!(snap.len(), 1);
    assert_eq!(snap.of_kind(Kind::DestinationRule).count(), 0);

    handle.shutdown().await;
}

#[tokio::test]
async fn duplicates_across_files_keep_the_first_and_report_the_second() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a.yaml"), DR);
    write(
        &dir.path().join("b.yaml"),
        &DR.replace("name: v1", "name: other"),
    );
    let store = ConfigStore::new();
    let rx = store.subscribe();
    let _handle = FileSource::new(vec![dir.path().to_path_buf()])
        .start(store)
        .await
        .unwrap();
    let snap = rx.borrow().clone();
    assert_eq!(snap.len(), 1);
    match snap
        .get_by(Kind::DestinationRule, "shop", "reviews")
        .unwrap()
        .resource
        .as_ref()
    {
        Resource::DestinationRule(o) => assert_eq!(o.spec.subsets[0].name, "v1"),
        other => panic!("unexpected {other:?}"),
    }
    let dup = snap.errors().next().expect("duplicate reported");
    assert_eq!(dup.code, Code::DuplicateResource);
    assert!(dup.location.file.ends_with("b.yaml"));
}

#[tokio::test]
async fn a_missing_root_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = FileSource::new(vec![missing.clone()])
        .start(ConfigStore::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}
