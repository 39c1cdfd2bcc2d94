use super::*;

fn names(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn endpoint_scope_narrows_to_watched_clusters() {
    let mut a = Affected::default();
    a.add(&PushScope::Endpoints(names(&["c1", "c2"])));
    let sub = Subscription::named(["c2", "c3"]);
    let all = Subscription::wildcard();
    assert_eq!(
        a.names_for(TypeUrl::ClusterLoadAssignment, &sub),
        Some(Names::some(["c2"]))
    );
    assert_eq!(
        a.names_for(TypeUrl::ClusterLoadAssignment, &Subscription::named(["c9"])),
        None
    );
    assert_eq!(a.names_for(TypeUrl::Cluster, &all), None);
    a.add(&PushScope::Types([TypeUrl::Secret].into_iter().collect()));
    assert_eq!(a.names_for(TypeUrl::Secret, &all), Some(Names::All));
    a.add(&PushScope::Full);
    assert_eq!(a.names_for(TypeUrl::Listener, &all), Some(Names::All));
}

#[test]
fn log_merges_since_and_falls_back_to_full() {
    let mut log = PushLog::default();
    assert_eq!(log.since(0), None);
    for i in 0..(HISTORY as u64 + 10) {
        let mut a = Affected::default();
        a.add(&PushScope::Endpoints(names(&[&format!("c{i}")])));
        log = log.publish(i, a, None);
    }
    let seq = log.seq;
    let recent = log.since(seq - 2).unwrap();
    assert!(!recent.full);
    assert_eq!(recent.endpoints.len(), 2);
    assert!(log.since(1).unwrap().full);
    assert_eq!(log.since(seq), None);
}

#[tokio::test(start_paused = true)]
async fn debounce_merges_bursts_and_respects_max_delay() {
    let (tx, mut rx) = watch::channel(Arc::new(PushLog::default()));
    let config = DebounceConfig {
        quiet: Duration::from_millis(100),
        max_delay: Duration::from_millis(350),
    };
    let pusher = spawn_debouncer(config, tx, None);
    pusher.push(1, PushScope::Endpoints(names(&["a"])));
    tokio::time::sleep(Duration::from_millis(50)).await;
    pusher.push(2, PushScope::Endpoints(names(&["b"])));
    rx.changed().await.unwrap();
    let log = rx.borrow_and_update().clone();
    assert_eq!((log.seq, log.version), (1, 2));
    assert_eq!(log.since(0).unwrap().endpoints, names(&["a", "b"]));

    // A steady trickle every 60 ms never goes quiet; max_delay forces a push.
    let start = Instant::now();
    let trickle = {
        let pusher = pusher.clone();
        tokio::spawn(async move {
            for v in 3..20 {
                pusher.push(v, PushScope::Full);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    rx.changed().await.unwrap();
    assert!(start.elapsed() <= Duration::from_millis(400));
    assert_eq!(rx.borrow_and_update().seq, 2);
    trickle.await.unwrap();
    drop(pusher);
    // What was pending when the pushers went away is still published.
    loop {
        rx.changed().await.unwrap();
        if rx.borrow_and_update().version == 19 {
            break;
        }
    }
}
