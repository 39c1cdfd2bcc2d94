//! A randomized linearizability check under faults, for the registry as a
//! grow-only set of services (each write adds a unique service, reads return
//! the set). For a grow-only set, a history is linearizable iff:
//! 1. a read contains every write acknowledged before the read began;
//! 2. a read contains no write that began after the read ended;
//! 3. a read that ended before another began returns a subset of it.
//!
//! Failed or timed-out writes may or may not have taken effect, so they are
//! only held to rule 2.

mod common;

use common::{publish_one, register, WAIT};
use isthmus_federation::testing::TestCluster;
use isthmus_federation::transport::mem::Faults;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
enum Op {
    Write { n: u64, acked: bool },
    Read { set: BTreeSet<String> },
}

#[derive(Debug, Clone)]
struct Record {
    invoke: Instant,
    complete: Instant,
    op: Op,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_partitions_and_loss_are_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let ids = [1u64, 2, 3, 4, 5];
    let tc = TestCluster::start(dir.path(), &ids, |c| {
        c.request_timeout = Duration::from_millis(700)
    })
    .await
    .unwrap();
    tc.wait_leader(&ids, WAIT).await.expect("leader");
    register(&tc.handle(1).unwrap(), "a").await;
    tc.net.set_faults(Faults {
        drop_rate: 0.05,
        duplicate_rate: 0.05,
        delay: Some((Duration::ZERO, Duration::from_millis(5))),
        ..Faults::default()
    });
    let run_for = Duration::from_secs(4);
    let start = Instant::now();

    // Chaos: random minority partitions, healed in between.
    let net = tc.net.clone();
    let chaos = tokio::spawn(async move {
        let mut rng = StdRng::from_os_rng();
        while start.elapsed() < run_for {
            let a = rng.random_range(1..=5u64);
            let b = 1 + (a % 5);
            let rest: Vec<u64> = ids.into_iter().filter(|i| *i != a && *i != b).collect();
            net.partition(&[&[a, b], &rest]);
            tokio::time::sleep(Duration::from_millis(rng.random_range(150..400))).await;
            net.update_faults(|f| f.cut.clear());
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
        }
        net.update_faults(|f| f.cut.clear());
    });

    let handles = Arc::new(tc.handles());
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let handles = handles.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = StdRng::from_os_rng();
            let mut history = Vec::new();
            let mut seq = 0u64;
            while start.elapsed() < run_for {
                let h = &handles[rng.random_range(0..handles.len())];
                let invoke = Instant::now();
                let op = if rng.random_bool(0.5) {
                    seq += 1;
                    let n = c * 1_000_000 + seq;
                    let acked = publish_one(h, "a", n).await.is_ok();
                    Op::Write { n, acked }
                } else {
                    match h.read_linearizable().await {
                        Ok(view) => Op::Read {
                            set: view
                                .services
                                .get("a")
                                .map(|m| m.keys().map(|k| k.name.clone()).collect())
                                .unwrap_or_default(),
                        },
                        Err(_) => continue,
                    }
                };
                history.push(Record {
                    invoke,
                    complete: Instant::now(),
                    op,
                });
            }
            history
        }));
    }
    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.unwrap());
    }
    chaos.await.unwrap();

    let writes: Vec<(&Record, u64, bool)> = history
        .iter()
        .filter_map(|r| match r.op {
            Op::Write { n, acked } => Some((r, n, acked)),
            _ => None,
        })
        .collect();
    let reads: Vec<(&Record, &BTreeSet<String>)> = history
        .iter()
        .filter_map(|r| match &r.op {
            Op::Read { set } => Some((r, set)),
            _ => None,
        })
        .collect();
    let acked = writes.iter().filter(|w| w.2).count();
    assert!(acked >= 20, "too few acknowledged writes to judge: {acked}");
    assert!(
        reads.len() >= 10,
        "too few successful reads to judge: {}",
        reads.len()
    );
    for (r, set) in &reads {
        for (w, n, acked) in &writes {
            let name = format!("svc-{n}");
            if *acked && w.complete < r.invoke {
                assert!(
                    set.contains(&name),
                    "read missed {name}, acknowledged before the read began"
                );
            }
            if w.invoke > r.complete {
                assert!(
                    !set.contains(&name),
                    "read saw {name}, written after the read ended"
                );
            }
        }
    }
    for (r1, s1) in &reads {
        for (r2, s2) in &reads {
            if r1.complete < r2.invoke {
                assert!(
                    s1.is_subset(s2),
                    "a later read lost writes an earlier read saw"
                );
            }
        }
    }
    // Every acknowledged write survived the chaos.
    tc.net.heal();
    let view = tc.handle(1).unwrap().read_linearizable().await.unwrap();
    for (_, n, acked) in &writes {
        if *acked {
            assert!(view.services["a"]
                .keys()
                .any(|k| k.name == format!("svc-{n}")));
        }
    }
}
