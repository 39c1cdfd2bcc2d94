use super::*;
use crate::fixtures::{cluster, key, service, upsert};
use crate::model::Health;

fn pid(seq: u64) -> Option<ProposalId> {
    Some(ProposalId {
        node: 1,
        epoch: 7,
        seq,
    })
}

#[test]
fn publish_requires_registration_and_own_services() {
    let mut reg = Registry::new(100);
    let r = reg.apply(
        1,
        pid(1),
        Command::Publish {
            cluster: "a".into(),
            diff: upsert(service("a", "reviews", 2, 1)),
        },
    );
    assert_eq!(r, Applied::Rejected(Rejected::UnknownCluster("a".into())));
    assert_eq!(reg.revision(), 0);
    assert_eq!(
        reg.apply(2, pid(2), Command::RegisterCluster(cluster("a"))),
        Applied::Changed(1)
    );
    let r = reg.apply(
        3,
        pid(3),
        Command::Publish {
            cluster: "a".into(),
            diff: upsert(service("b", "reviews", 2, 1)),
        },
    );
    assert!(
        matches!(r, Applied::Rejected(Rejected::ForeignService { .. })),
        "{r:?}"
    );
    assert_eq!(
        reg.revision(),
        1,
        "a rejected command must not change the revision"
    );
    assert_eq!(reg.applied_index(), 3);
}

#[test]
fn revisions_are_monotonic_and_events_ordered() {
    let mut reg = Registry::new(100);
    reg.apply(1, pid(1), Command::RegisterCluster(cluster("a")));
    reg.apply(
        2,
        pid(2),
        Command::Publish {
            cluster: "a".into(),
            diff: upsert(service("a", "reviews", 2, 1)),
        },
    );
    // Same content again: no change, no revision.
    assert_eq!(
        reg.apply(
            3,
            pid(3),
            Command::Publish {
                cluster: "a".into(),
                diff: upsert(service("a", "reviews", 2, 1))
            }
        ),
        Applied::Unchanged(2)
    );
    let diff = PublishDiff {
        upserts: vec![service("a", "ratings", 1, 2)],
        removals: vec![key("default", "reviews")],
    };
    assert_eq!(
        reg.apply(
            4,
            pid(4),
            Command::Publish {
                cluster: "a".into(),
                diff
            }
        ),
        Applied::Changed(3)
    );
    let events = reg.events_since(1, 100).unwrap();
    let revs: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revs, vec![1, 2, 3, 3]);
    assert!(matches!(events[2].kind, EventKind::ServiceRemoved { .. }));
    assert_eq!(reg.events_since(3, 100).unwrap().len(), 2);
    assert!(reg.events_since(4, 100).unwrap().is_empty());
    let view = reg.view();
    assert_eq!(view.service_keys(), vec![key("default", "ratings")]);
}

#[test]
fn duplicate_proposal_id_is_applied_once() {
    let mut reg = Registry::new(100);
    reg.apply(1, pid(1), Command::RegisterCluster(cluster("a")));
    assert_eq!(
        reg.apply(
            2,
            pid(1),
            Command::DeregisterCluster {
                cluster: "a".into()
            }
        ),
        Applied::Duplicate(1)
    );
    assert!(reg.view().clusters.contains_key("a"));
}

#[test]
fn history_compaction_reports_compacted_revision() {
    let mut reg = Registry::new(3);
    for i in 0..5u64 {
        reg.apply(
            i + 1,
            pid(i),
            Command::RegisterCluster(cluster(&format!("c{i}"))),
        );
    }
    assert_eq!(reg.revision(), 5);
    let err = reg.events_since(2, 100).unwrap_err();
    assert_eq!(
        err,
        Compacted {
            requested: 2,
            compacted: 2
        }
    );
    assert_eq!(reg.events_since(3, 100).unwrap().len(), 3);
}

#[test]
fn lease_expiry_marks_unavailable_and_renewal_restores() {
    let mut reg = Registry::new(100);
    reg.apply(1, pid(1), Command::RegisterCluster(cluster("a")));
    reg.apply(
        2,
        pid(2),
        Command::Publish {
            cluster: "a".into(),
            diff: upsert(service("a", "reviews", 2, 1)),
        },
    );
    // A stale expiry (renewal index does not match) is ignored.
    assert_eq!(
        reg.apply(
            3,
            None,
            Command::ExpireLease {
                cluster: "a".into(),
                renewed_at: 0
            }
        ),
        Applied::Unchanged(2)
    );
    assert_eq!(
        reg.apply(
            4,
            None,
            Command::ExpireLease {
                cluster: "a".into(),
                renewed_at: 1
            }
        ),
        Applied::Changed(3)
    );
    let view = reg.view();
    let svc = &view.services["a"][&key("default", "reviews")];
    assert!(svc
        .endpoints
        .iter()
        .all(|e| e.health == Health::Unavailable));
    assert_eq!(svc.endpoints.len(), 2, "endpoints are kept");
    let events = reg.events_since(3, 100).unwrap();
    assert!(matches!(events[0].kind, EventKind::LeaseExpired { .. }));
    assert!(matches!(events[1].kind, EventKind::ServiceUpserted(_)));
    // Publishing while expired still shows Unavailable.
    reg.apply(
        5,
        pid(5),
        Command::Publish {
            cluster: "a".into(),
            diff: upsert(service("a", "reviews", 3, 1)),
        },
    );
    assert!(reg.view().services["a"][&key("default", "reviews")]
        .endpoints
        .iter()
        .all(|e| e.health == Health::Unavailable));
    assert_eq!(
        reg.apply(
            6,
            pid(6),
            Command::RenewLease {
                cluster: "a".into()
            }
        ),
        Applied::Changed(5)
    );
    let view = reg.view();
    let svc = &view.services["a"][&key("default", "reviews")];
    assert_eq!(svc.endpoints.len(), 3);
    assert!(svc.endpoints.iter().all(|e| e.health == Health::Healthy));
    // A renewal of a live lease changes nothing visible.
    assert_eq!(
        reg.apply(
            7,
            pid(7),
            Command::RenewLease {
                cluster: "a".into()
            }
        ),
        Applied::Unchanged(5)
    );
}

#[test]
fn image_round_trip_reproduces_view() {
    let mut reg = Registry::new(100);
    reg.apply(1, pid(1), Command::RegisterCluster(cluster("a")));
    reg.apply(2, pid(2), Command::RegisterCluster(cluster("b")));
    reg.apply(
        3,
        pid(3),
        Command::Publish {
            cluster: "a".into(),
            diff: upsert(service("a", "reviews", 2, 1)),
        },
    );
    reg.apply(
        4,
        pid(4),
        Command::Publish {
            cluster: "b".into(),
            diff: upsert(service("b", "reviews", 1, 2)),
        },
    );
    reg.apply(
        5,
        None,
        Command::ExpireLease {
            cluster: "b".into(),
            renewed_at: 2,
        },
    );
    let image = reg.to_image();
    let json = serde_json::to_vec(&image).unwrap();
    let back: StateImage = serde_json::from_slice(&json).unwrap();
    let restored = Registry::from_image(back, 100);
    assert_eq!(*restored.view(), *reg.view());
    assert_eq!(
        restored
            .view()
            .instances(&key("default", "reviews"))
            .count(),
        2
    );
    // Retried proposal ids stay deduplicated after restore.
    let mut restored = restored;
    assert_eq!(
        restored.apply(
            6,
            pid(4),
            Command::DeregisterCluster {
                cluster: "b".into()
            }
        ),
        Applied::Duplicate(5)
    );
    assert!(
        restored.events_since(1, 10).is_err(),
        "history before the image is gone"
    );
}
