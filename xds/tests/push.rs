//! The push pipeline: endpoint-only pushes, one computation per proxy shape,
//! slow clients.

mod common;

use common::*;
use isthmus_xds::{TypeUrl, XdsConfig};

#[tokio::test]
async fn endpoint_push_reaches_only_proxies_watching_that_cluster() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut a = SotwClient::connect(server.addr, sidecar("a"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    a.recv().await;
    a.ack(CDS, &[]).await;
    a.send(req(EDS, &["c1"], "", "")).await;
    a.recv().await;
    a.ack(EDS, &["c1"]).await;
    let mut b = SotwClient::connect(server.addr, sidecar("b"), req(EDS, &["c2"], "", ""))
        .await
        .unwrap();
    b.recv().await;
    b.ack(EDS, &["c2"]).await;
    let cds_calls = generator.calls(TypeUrl::Cluster);

    generator.update(|m| *m.endpoints.get_mut("c1").unwrap() = 2);
    server.push_endpoints(2, &["c1"]);
    let r = a.recv().await;
    assert_eq!(r.type_url, EDS, "an endpoint change sends no CDS");
    assert_eq!(cla(&r), [("c1".to_owned(), 2)]);
    a.ack(EDS, &["c1"]).await;

    generator.update(|m| *m.endpoints.get_mut("c2").unwrap() = 2);
    server.push_endpoints(3, &["c2"]);
    let r = b.recv().await;
    assert_eq!(
        cla(&r),
        [("c2".to_owned(), 2)],
        "b got nothing for c1 before this"
    );
    assert_eq!(
        generator.calls(TypeUrl::Cluster),
        cds_calls,
        "endpoint-only pushes never regenerate clusters"
    );
    let version = r.version_info.clone();
    server
        .wait_status("push version in status", |s| {
            s.iter().any(|p| {
                p.proxy.name == "b"
                    && p.types[&TypeUrl::ClusterLoadAssignment].input_version == 3
                    && p.types[&TypeUrl::ClusterLoadAssignment]
                        .sent_version
                        .as_deref()
                        == Some(&version)
            })
        })
        .await;
}

#[tokio::test]
async fn proxies_of_one_shape_share_one_generation_per_push() {
    let generator = TestGenerator::new(Model::basic());
    let server = start(generator.clone(), fast_config()).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        // Same IP and namespace, different pods: one shape.
        let mut c = SotwClient::connect(
            server.addr,
            sidecar(&format!("p{i}")),
            req(CDS, &[], "", ""),
        )
        .await
        .unwrap();
        c.recv().await;
        c.ack(CDS, &[]).await;
        clients.push(c);
    }
    assert_eq!(generator.calls(TypeUrl::Cluster), 1);
    generator.update(|m| {
        m.clusters.insert("c7".into(), 1);
    });
    server.push_full(2);
    for c in &mut clients {
        assert!(cluster_names(&c.recv().await).contains(&"c7".to_owned()));
    }
    assert_eq!(
        generator.calls(TypeUrl::Cluster),
        2,
        "one generation for five proxies"
    );

    // A proxy of another shape gets its own.
    let mut other = SotwClient::connect(
        server.addr,
        node("sidecar~10.9.9.9~x.other~other.svc.cluster.local"),
        req(CDS, &[], "", ""),
    )
    .await
    .unwrap();
    other.recv().await;
    assert_eq!(generator.calls(TypeUrl::Cluster), 3);
}

#[tokio::test]
async fn per_type_shapes_share_eds_across_addresses() {
    let generator = TestGenerator::new(Model::basic());
    generator
        .eds_ignores_address
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let server = start(generator.clone(), fast_config()).await;
    let mut clients = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        let mut c = SotwClient::connect(
            server.addr,
            node(&format!("sidecar~{ip}~p.default~default.svc.cluster.local")),
            req(CDS, &[], "", ""),
        )
        .await
        .unwrap();
        c.recv().await;
        c.ack(CDS, &[]).await;
        c.send(req(EDS, &["c1"], "", "")).await;
        c.recv().await;
        c.ack(EDS, &["c1"]).await;
        clients.push(c);
    }
    assert_eq!(generator.calls(TypeUrl::Cluster), 3, "CDS keys on the IP");
    assert_eq!(
        generator.calls(TypeUrl::ClusterLoadAssignment),
        1,
        "EDS does not: one generation for three addresses"
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_does_not_block_others() {
    let mut model = Model::basic();
    for i in 0..200 {
        model.clusters.insert(format!("big{i:03}"), 1);
    }
    model.pad = 2_000; // ~400 KB per CDS response
    let generator = TestGenerator::new(model);
    let config = XdsConfig {
        response_queue: 1,
        ..fast_config()
    };
    let server = start(generator.clone(), config).await;
    // The slow client subscribes and then never reads.
    let slow = SotwClient::connect(server.addr, sidecar("slow"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    let mut fast = SotwClient::connect(server.addr, sidecar("fast"), req(CDS, &[], "", ""))
        .await
        .unwrap();
    fast.recv().await;
    fast.ack(CDS, &[]).await;

    let rounds = 60u32;
    for rev in 2..=rounds {
        generator.update(|m| *m.clusters.get_mut("c1").unwrap() = rev);
        server.push_full(rev.into());
        // Debouncing may merge rounds; the fast client must reach this one.
        loop {
            let r = fast.recv().await;
            fast.ack(CDS, &[]).await;
            if cluster_revs(&r).contains(&("c1".to_owned(), rev.to_string())) {
                break;
            }
        }
    }
    // The slow stream is bounded: far fewer responses were produced for it
    // than pushes happened (60 pushes × 400 KB would be 24 MB).
    let slow_sent = server
        .xds
        .status()
        .iter()
        .find(|p| p.proxy.name == "slow")
        .map(|p| p.types[&TypeUrl::Cluster].responses)
        .unwrap();
    assert!(
        slow_sent < u64::from(rounds) / 2,
        "slow client got {slow_sent} responses queued"
    );
    drop(slow);
}
