//! State-of-the-world protocol: initial fetch, ACK, NACK, subscriptions,
//! resume on another replica.

mod common;

use common::*;
use isthmus_xds::{SyncState, TypeUrl};

#[tokio::test]
async fn initial_fetch_then_ack_is_recorded() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator, fast_config()).await;
    let mut c = SotwClient::connect(server.addr, sidecar("a"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    let r = c.recv().await;
    assert_eq!(r.type_url, CDS);
    assert_eq!(cluster_names(&r), ["c1", "c2", "c3"]);
    assert!(!r.version_info.is_empty() && !r.nonce.is_empty());
    c.ack(CDS, &[]).await;

    c.send(req(EDS, &["c1", "c2"], "", "")).await;
    let e = c.recv().await;
    assert_eq!(e.type_url, EDS);
    assert_eq!(cla(&e), [("c1".to_owned(), 1), ("c2".to_owned(), 1)]);
    c.ack(EDS, &["c1", "c2"]).await;

    let (cds_version, eds_version) = (r.version_info.clone(), e.version_info.clone());
    server
        .wait_status("both types ACKed", |s| {
            s.len() == 1
                && s[0].types[&TypeUrl::Cluster].acked_version.as_deref() == Some(&cds_version)
                && s[0].types[&TypeUrl::ClusterLoadAssignment]
                    .acked_version
                    .as_deref()
                    == Some(&eds_version)
                && s[0].types.values().all(|t| t.state == SyncState::Synced)
        })
        .await;
    let st = &server.xds.proxy_status(&c.node.id)[0];
    assert_eq!(st.types[&TypeUrl::Cluster].resources().len(), 3);
    assert!(st.types[&TypeUrl::Cluster].wildcard);
    assert_eq!(
        st.types[&TypeUrl::ClusterLoadAssignment].subscribed_names(),
        ["c1", "c2"]
    );
    assert_eq!(server.metric("isthmus_xds_connected_proxies", None), 1.0);
    assert_eq!(server.metric("isthmus_xds_pushes_total", Some("cds")), 1.0);
}

#[tokio::test]
async fn nack_keeps_last_good_version_and_is_recorded() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = SotwClient::connect(server.addr, sidecar("a"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    let good = c.recv().await.version_info;
    c.ack(CDS, &[]).await;
    server
        .wait_status("the first ACK", |s| {
            s.first()
                .is_some_and(|p| p.types[&TypeUrl::Cluster].state == SyncState::Synced)
        })
        .await;

    generator.update(|m| *m.clusters.get_mut("c1").unwrap() = 2);
    server.push_full(2);
    let bad = c.recv().await;
    assert_ne!(bad.version_info, good);
    c.nack(CDS, &[], &good, "cluster c1: unknown field").await;

    server
        .wait_status("the NACK", |s| {
            s.first().is_some_and(|p| {
                let t = &p.types[&TypeUrl::Cluster];
                t.state == SyncState::Nacked
                    && t.acked_version.as_deref() == Some(&good)
                    && t.last_nack.as_ref().is_some_and(|n| {
                        n.message == "cluster c1: unknown field"
                            && n.rejected_version == bad.version_info
                    })
            })
        })
        .await;
    assert_eq!(server.metric("isthmus_xds_nacks_total", Some("cds")), 1.0);
    // What `isthmus status` shows.
    let json = serde_json::to_value(server.xds.status()).unwrap();
    let cds = &json[0]["types"]["Cluster"];
    assert_eq!(cds["state"], "nacked");
    assert_eq!(cds["acked_version"], good.as_str());
    assert_eq!(cds["last_nack"]["message"], "cluster c1: unknown field");
    assert_eq!(json[0]["proxy"]["node_id"], c.node.id.as_str());
    assert_eq!(cds["resources"].as_object().map(|m| m.len()), Some(3));

    // The rejected content is not resent; the next change is.
    generator.update(|m| *m.clusters.get_mut("c1").unwrap() = 3);
    server.push_full(3);
    let fixed = c.recv().await;
    assert!(cluster_revs(&fixed).contains(&("c1".to_owned(), "3".to_owned())));
    c.ack(CDS, &[]).await;
    let fixed_version = fixed.version_info.clone();
    server
        .wait_status("the ACK after the fix", |s| {
            s.first().is_some_and(|p| {
                let t = &p.types[&TypeUrl::Cluster];
                t.state == SyncState::Synced && t.acked_version.as_deref() == Some(&fixed_version)
            })
        })
        .await;
}

#[tokio::test]
async fn a_push_sends_only_the_types_that_changed_in_order() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = SotwClient::connect(server.addr, sidecar("a"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    c.recv().await;
    c.ack(CDS, &[]).await;
    c.send(req(EDS, &["c1", "c2", "c3"], "", "")).await;
    c.recv().await;
    c.ack(EDS, &["c1", "c2", "c3"]).await;
    c.send(req(LDS, &[], "", "")).await;
    c.recv().await;
    c.ack(LDS, &[]).await;
    c.send(req(RDS, &["r1"], "", "")).await;
    c.recv().await;
    c.ack(RDS, &["r1"]).await;

    // Clusters and endpoints change; a full push must send CDS then EDS
    // (only the changed assignment), and nothing for LDS/RDS.
    generator.update(|m| {
        m.clusters.insert("c4".into(), 1);
        m.endpoints.insert("c2".into(), 5);
    });
    server.push_full(2);
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(
        cluster_names(&cds),
        ["c1", "c2", "c3", "c4"],
        "CDS carries the full set"
    );
    let eds = c.recv().await;
    assert_eq!(eds.type_url, EDS);
    assert_eq!(
        cla(&eds),
        [("c2".to_owned(), 5)],
        "EDS carries only the changed assignment"
    );
    c.ack(CDS, &[]).await;
    c.ack(EDS, &["c1", "c2", "c3"]).await;

    // Had LDS or RDS been resent above, they would arrive before this.
    generator.update(|m| *m.routes.get_mut("r1").unwrap() = 2);
    server.push_full(3);
    let rds = c.recv().await;
    assert_eq!(rds.type_url, RDS);
}

#[tokio::test]
async fn wildcard_and_named_subscriptions_and_unsubscribe() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut wild = SotwClient::connect(server.addr, sidecar("w"), req(CDS, &["*"], "", ""))
        .await
        .unwrap();
    let mut named = SotwClient::connect(server.addr, sidecar("n"), req(CDS, &["c1"], "", ""))
        .await
        .unwrap();
    assert_eq!(cluster_names(&wild.recv().await), ["c1", "c2", "c3"]);
    assert_eq!(cluster_names(&named.recv().await), ["c1"]);
    wild.ack(CDS, &["*"]).await;
    named.ack(CDS, &["c1"]).await;

    // A new cluster reaches the wildcard subscriber only.
    generator.update(|m| {
        m.clusters.insert("c9".into(), 1);
    });
    server.push_full(2);
    assert!(cluster_names(&wild.recv().await).contains(&"c9".to_owned()));
    wild.ack(CDS, &["*"]).await;
    // Growing the named subscription answers with the new set.
    named.ack(CDS, &["c1", "c9"]).await;
    assert_eq!(cluster_names(&named.recv().await), ["c1", "c9"]);
    // Shrinking it: later changes to the dropped name are not sent.
    named.ack(CDS, &["c1"]).await;
    assert_eq!(cluster_names(&named.recv().await), ["c1"]);
    named.ack(CDS, &["c1"]).await;
    generator.update(|m| *m.clusters.get_mut("c9").unwrap() = 2);
    server.push_full(3);
    wild.recv().await;
    generator.update(|m| *m.clusters.get_mut("c1").unwrap() = 2);
    server.push_full(4);
    let r = named.recv().await;
    assert_eq!(cluster_revs(&r), [("c1".to_owned(), "2".to_owned())]);
}

#[tokio::test]
async fn stale_nonces_are_ignored() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = SotwClient::connect(server.addr, sidecar("a"), req(EDS, &["c1"], "", ""))
        .await
        .unwrap();
    let first = c.recv().await;
    generator.update(|m| *m.endpoints.get_mut("c1").unwrap() = 2);
    server.push_endpoints(2, &["c1"]);
    let second = c.recv().await;
    // A request answering the first response (stale) that also changes the
    // names must be ignored: no response for c2.
    c.send(req(EDS, &["c1", "c2"], &first.version_info, &first.nonce))
        .await;
    // The current nonce with the same change is honoured.
    c.send(req(EDS, &["c1", "c3"], &second.version_info, &second.nonce))
        .await;
    let r = c.recv().await;
    assert_eq!(
        cla(&r),
        [("c3".to_owned(), 1)],
        "answered the current nonce's subscription (only the new name), not the stale one"
    );
}

#[tokio::test]
async fn reconnect_to_another_replica_resumes_without_resend() {
    let generator = TestGenerator::new(Model::basic());
    let a = start(generator.clone(), fast_config()).await;
    let b = start(generator.clone(), fast_config()).await;
    let mut c = SotwClient::connect(a.addr, sidecar("a"), req(EDS, &["c1", "c2"], "", ""))
        .await
        .unwrap();
    let r = c.recv().await;
    c.ack(EDS, &["c1", "c2"]).await;
    drop(c);

    // Same input on replica b: the client's version is current, no resend.
    let mut c = SotwClient::connect(
        b.addr,
        sidecar("a"),
        req(EDS, &["c1", "c2"], &r.version_info, &r.nonce),
    )
    .await
    .unwrap();
    let version = r.version_info.clone();
    b.wait_status("the resumed stream", |s| {
        s.first().is_some_and(|p| {
            let t = &p.types[&TypeUrl::ClusterLoadAssignment];
            t.state == SyncState::Synced
                && t.acked_version.as_deref() == Some(&version)
                && t.responses == 0
        })
    })
    .await;
    // The first thing it receives is the next change.
    generator.update(|m| *m.endpoints.get_mut("c2").unwrap() = 7);
    b.push_endpoints(2, &["c2"]);
    let next = c.recv().await;
    assert_eq!(cla(&next), [("c2".to_owned(), 7)]);

    // A client whose version is out of date gets everything again.
    let mut old = SotwClient::connect(
        b.addr,
        sidecar("o"),
        req(EDS, &["c1", "c2"], &r.version_info, ""),
    )
    .await
    .unwrap();
    assert_eq!(
        cla(&old.recv().await),
        [("c1".to_owned(), 1), ("c2".to_owned(), 7)]
    );
}

#[tokio::test]
async fn generator_failure_keeps_last_good_and_recovers() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = SotwClient::connect(server.addr, sidecar("a"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    c.recv().await;
    c.ack(CDS, &[]).await;
    generator.update(|m| m.fail = true);
    server.push_full(2);
    server
        .wait_status("the generator error", |s| {
            s.first().is_some_and(|p| {
                p.types[&TypeUrl::Cluster]
                    .generate_error
                    .as_deref()
                    .is_some_and(|e| e.contains("broken on purpose"))
            })
        })
        .await;
    generator.update(|m| {
        m.fail = false;
        m.clusters.remove("c3");
    });
    server.push_full(3);
    assert_eq!(cluster_names(&c.recv().await), ["c1", "c2"]);
    let st = &server.xds.status()[0];
    assert_eq!(st.types[&TypeUrl::Cluster].generate_error, None);
    assert_eq!(st.types[&TypeUrl::Cluster].state, SyncState::Sent);
}

#[tokio::test]
async fn eds_subscription_growth_sends_only_new_names_and_shrink_nothing() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut c = SotwClient::connect(server.addr, sidecar("a"), req(EDS, &["c1"], "", ""))
        .await
        .unwrap();
    assert_eq!(cla(&c.recv().await), [("c1".to_owned(), 1)]);
    c.ack(EDS, &["c1", "c2"]).await;
    let grown = c.recv().await;
    assert_eq!(cla(&grown), [("c2".to_owned(), 1)]);
    c.ack(EDS, &["c2"]).await;
    server
        .wait_status("the shrink", |s| {
            s.first().is_some_and(|p| {
                let t = &p.types[&TypeUrl::ClusterLoadAssignment];
                t.subscribed_names() == ["c2"] && t.resources().keys().eq(["c2"].iter())
            })
        })
        .await;
    generator.update(|m| *m.endpoints.get_mut("c1").unwrap() = 2);
    server.push_endpoints(2, &["c1"]);
    generator.update(|m| *m.endpoints.get_mut("c2").unwrap() = 2);
    server.push_endpoints(3, &["c2"]);
    assert_eq!(
        cla(&c.recv().await),
        [("c2".to_owned(), 2)],
        "nothing for c1 came first"
    );
}
