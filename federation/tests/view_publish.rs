//! The published view (watches, `snapshot_stale`) is rate-limited by
//! `view_publish_interval`, but a linearizable reader finds its state there
//! at once and watchers get the last change without further traffic.

mod common;

use common::{publish_one, register, WAIT};
use isthmus_federation::fixtures::key;
use isthmus_federation::testing::TestCluster;
use std::time::Duration;

#[tokio::test]
async fn published_view_catches_up_with_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a view published only on the timer would be seen
    // stale by the assertions right after the read.
    let tc = TestCluster::start(dir.path(), &[1, 2, 3], |c| {
        c.view_publish_interval = Duration::from_secs(2)
    })
    .await
    .unwrap();
    let leader = tc.wait_leader(&[1, 2, 3], WAIT).await.expect("leader");
    let h = tc.handle(leader).unwrap();
    register(&h, "a").await;
    let mut last = 0;
    for i in 0..20 {
        last = publish_one(&h, "a", i).await.unwrap();
    }
    let read = h.read_linearizable().await.unwrap();
    assert!(read.revision >= last);
    let stale = h.snapshot_stale();
    assert!(
        stale.revision >= read.revision,
        "after a linearizable read the published view is at least as new ({} < {})",
        stale.revision,
        read.revision
    );
    assert!(stale.services["a"].contains_key(&key("default", "svc-19")));
    // Followers publish the last change on their timer, with no more writes.
    assert!(tc.wait_revision(&[1, 2, 3], last, WAIT).await);
}
