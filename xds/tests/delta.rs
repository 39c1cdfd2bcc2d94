//! Incremental (delta) protocol: subscribe, unsubscribe, removals, ACK/NACK,
//! reconnect with initial_resource_versions.

mod common;

use std::collections::HashMap;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use isthmus_xds::{SyncState, TypeUrl};

#[tokio::test]
async fn subscribe_unsubscribe_and_removals() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = DeltaClient::connect(server.addr, sidecar("a"), delta_sub(CDS, &[], &[])).await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c1", "c2", "c3"]);
    assert!(r.removed_resources.is_empty());
    c.ack(&r).await;

    c.send(delta_sub(EDS, &["c1", "c2"], &[])).await;
    let e = c.recv().await;
    assert_eq!(delta_names(&e), ["c1", "c2"]);
    c.ack(&e).await;
    // Subscribing one more name sends just that one.
    c.send(delta_sub(EDS, &["c3"], &[])).await;
    let e3 = c.recv().await;
    assert_eq!(delta_names(&e3), ["c3"]);
    c.ack(&e3).await;
    // Unsubscribing needs no answer; later changes to it are not sent.
    c.send(delta_sub(EDS, &[], &["c2"])).await;
    server
        .wait_status("the unsubscribe", |s| {
            s.first().is_some_and(|p| {
                p.types[&TypeUrl::ClusterLoadAssignment].subscribed_names() == ["c1", "c3"]
            })
        })
        .await;
    generator.update(|m| *m.endpoints.get_mut("c2").unwrap() = 2);
    server.push_endpoints(2, &["c2"]);

    // Removing a cluster: CDS and EDS announce it in removed_resources, in
    // that order (and the ignored c2 change did not come first).
    generator.update(|m| {
        m.clusters.remove("c1");
        m.endpoints.remove("c1");
    });
    server.push_full(3);
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert!(cds.resources.is_empty());
    assert_eq!(cds.removed_resources, ["c1"]);
    let eds = c.recv().await;
    assert_eq!(eds.type_url, EDS);
    assert_eq!(eds.removed_resources, ["c1"]);
    assert!(eds.resources.is_empty());
    assert_eq!(eds.system_version_info, "3");
    c.ack(&cds).await;
    c.ack(&eds).await;

    server
        .wait_status("delta ACKs", |s| {
            s.first().is_some_and(|p| {
                p.types[&TypeUrl::Cluster].state == SyncState::Synced
                    && p.types[&TypeUrl::ClusterLoadAssignment].state == SyncState::Synced
                    && p.types[&TypeUrl::ClusterLoadAssignment].subscribed_names() == ["c1", "c3"]
            })
        })
        .await;
}

#[tokio::test]
async fn delta_nack_is_recorded_and_not_resent() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = DeltaClient::connect(server.addr, sidecar("a"), delta_sub(CDS, &["*"], &[])).await;
    let r = c.recv().await;
    c.ack(&r).await;
    generator.update(|m| *m.clusters.get_mut("c2").unwrap() = 2);
    server.push_full(2);
    let bad = c.recv().await;
    assert_eq!(delta_names(&bad), ["c2"]);
    c.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        response_nonce: bad.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "c2 is invalid".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    server
        .wait_status("the delta NACK", |s| {
            s.first().is_some_and(|p| {
                let t = &p.types[&TypeUrl::Cluster];
                t.state == SyncState::Nacked
                    && t.last_nack
                        .as_ref()
                        .is_some_and(|n| n.message == "c2 is invalid")
            })
        })
        .await;
    assert_eq!(server.metric("isthmus_xds_nacks_total", Some("cds")), 1.0);
    // Another cluster changes: only it is sent, not the rejected c2 again.
    generator.update(|m| *m.clusters.get_mut("c3").unwrap() = 2);
    server.push_full(3);
    assert_eq!(delta_names(&c.recv().await), ["c3"]);
}

#[tokio::test]
async fn reconnect_with_initial_versions_resumes_on_another_replica() {
    let generator = TestGenerator::new(Model::basic());
    let a = start(generator.clone(), fast_config()).await;
    let b = start(generator.clone(), fast_config()).await;
    let mut c = DeltaClient::connect(a.addr, sidecar("a"), delta_sub(CDS, &["*"], &[])).await;
    let r = c.recv().await;
    c.ack(&r).await;
    let held: HashMap<String, String> = r
        .resources
        .iter()
        .map(|x| (x.name.clone(), x.version.clone()))
        .collect();
    drop(c);

    // While disconnected: c1 changes, c3 disappears, c5 appears.
    generator.update(|m| {
        *m.clusters.get_mut("c1").unwrap() = 2;
        m.clusters.remove("c3");
        m.clusters.insert("c5".into(), 1);
    });
    let mut first = delta_sub(CDS, &["*"], &[]);
    first.initial_resource_versions = held;
    let mut c = DeltaClient::connect(b.addr, sidecar("a"), first).await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c1", "c5"], "unchanged c2 is not resent");
    assert_eq!(r.removed_resources, ["c3"]);
}

#[tokio::test]
async fn unchanged_resume_sends_nothing() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = DeltaClient::connect(
        server.addr,
        sidecar("a"),
        delta_sub(EDS, &["c1", "c2"], &[]),
    )
    .await;
    let r = c.recv().await;
    let held: HashMap<String, String> = r
        .resources
        .iter()
        .map(|x| (x.name.clone(), x.version.clone()))
        .collect();
    drop(c);
    let mut first = delta_sub(EDS, &["c1", "c2"], &[]);
    first.initial_resource_versions = held;
    let mut c = DeltaClient::connect(server.addr, sidecar("a"), first).await;
    // The first message is the next change, so nothing was resent.
    generator.update(|m| *m.endpoints.get_mut("c2").unwrap() = 9);
    server.push_endpoints(2, &["c2"]);
    assert_eq!(delta_names(&c.recv().await), ["c2"]);
}

#[tokio::test]
async fn an_empty_wildcard_subscription_is_answered() {
    let generator = TestGenerator::new(Model::basic());
    generator.update(|m| m.listeners.clear());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = DeltaClient::connect(server.addr, sidecar("a"), delta_sub(LDS, &[], &[])).await;
    let r = c.recv().await;
    assert_eq!(r.type_url, LDS);
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    c.ack(&r).await;
    // Later additions still arrive as usual.
    generator.update(|m| {
        m.listeners.insert("l9".into(), 1);
    });
    server.push_full(2);
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["l9"]);
}

#[tokio::test]
async fn subscribing_to_a_missing_resource_is_answered_as_removed() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = DeltaClient::connect(
        server.addr,
        sidecar("a"),
        delta_sub(EDS, &["c1", "nope"], &[]),
    )
    .await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["c1"]);
    assert_eq!(r.removed_resources, ["nope"]);
    c.ack(&r).await;
    // Once it exists, the subscriber gets it.
    generator.update(|m| {
        m.endpoints.insert("nope".into(), 1);
    });
    server.push_endpoints(2, &["nope"]);
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["nope"]);
    assert!(r.removed_resources.is_empty());
}

#[tokio::test]
async fn explicit_wildcard_survives_named_subscriptions_legacy_does_not() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut explicit =
        DeltaClient::connect(server.addr, sidecar("e"), delta_sub(CDS, &["*"], &[])).await;
    let mut legacy =
        DeltaClient::connect(server.addr, sidecar("l"), delta_sub(CDS, &[], &[])).await;
    let r = explicit.recv().await;
    explicit.ack(&r).await;
    let r = legacy.recv().await;
    legacy.ack(&r).await;
    explicit.send(delta_sub(CDS, &["c1"], &[])).await;
    legacy.send(delta_sub(CDS, &["c1"], &[])).await;
    server
        .wait_status("both subscriptions", |s| {
            s.len() == 2
                && s.iter()
                    .all(|p| p.types[&TypeUrl::Cluster].subscribed_names() == ["c1"])
        })
        .await;
    generator.update(|m| {
        m.clusters.insert("c8".into(), 1);
        *m.clusters.get_mut("c1").unwrap() = 2;
    });
    server.push_full(2);
    assert_eq!(delta_names(&explicit.recv().await), ["c1", "c8"]);
    assert_eq!(
        delta_names(&legacy.recv().await),
        ["c1"],
        "naming resources ends a legacy wildcard"
    );
}
