//! Federation partition: us-west's control plane is cut off, either by
//! cutting every federation link to and from it (UDP fault proxies on the
//! QUIC links: a real partition, the control plane keeps running and
//! serving its proxies) or by freezing it (SIGSTOP, the cheap variant).
//! The majority (us-east, eu-central) keeps accepting registry changes;
//! us-west keeps serving with its last known endpoints; after healing,
//! us-west converges.

mod common;

use isthmus_multicluster_tests::admin::get_json;
use isthmus_multicluster_tests::{wait, FederationSpec, Load, Summary};

const NEW_ENDPOINT: &str = "apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: reviews-v3
  namespace: default
spec:
  address: ADDRESS
  serviceAccount: bookinfo-reviews
  labels:
    app: reviews
    version: v3
";

/// The two tests of this file start a federation each; one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, PartialEq)]
enum Isolation {
    CutLinks,
    Freeze,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_partition_majority_accepts_changes_isolated_cluster_keeps_serving_and_converges() {
    let _one = ONE_AT_A_TIME.lock().await;
    scenario(Isolation::CutLinks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_control_plane_majority_accepts_changes_isolated_cluster_keeps_serving_and_converges(
) {
    let _one = ONE_AT_A_TIME.lock().await;
    scenario(Isolation::Freeze).await;
}

async fn scenario(how: Isolation) {
    let mut spec = FederationSpec::bookinfo();
    spec.federation_links = how == Isolation::CutLinks;
    let mut fed = common::start(spec, "us-east").await.unwrap();
    let west_admin = fed.cluster("us-west").unwrap().block.control_admin();
    let west_id = get_json(west_admin, "/debug/federation").await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut load = Load::start(
        fed.load("us-west", "productpage-v1", "reviews", common::rate())
            .unwrap(),
    );

    match how {
        Isolation::CutLinks => assert_eq!(fed.cut_links("us-west", true).unwrap(), 4),
        Isolation::Freeze => fed.partition("us-west").unwrap(),
    }
    // The majority has (or elects) a leader other than us-west.
    let fed_ref = &fed;
    wait::until(
        "a leader among us-east and eu-central",
        15 * common::SECOND,
        || async move {
            match fed_ref.raft_status("us-east").await {
                Ok((_, leader)) if leader != 0 && leader != west_id => Ok(()),
                other => Err(format!("us-east sees {other:?}")),
            }
        },
    )
    .await
    .unwrap();

    // A change in eu-central: a third reviews endpoint.
    let eu = fed.cluster("eu-central").unwrap().block;
    let yaml = NEW_ENDPOINT.replace("ADDRESS", &eu.workload_ip(9).to_string());
    fed.write_config("eu-central", "reviews-v3.yaml", &yaml)
        .unwrap();
    for observer in ["us-east", "eu-central"] {
        wait::until(
            &format!("{observer} to see the new endpoint"),
            15 * common::SECOND,
            || async {
                let v = fed.registry(observer).await?;
                match v.endpoints("eu-central", "default/reviews") {
                    3 => Ok(()),
                    n => Err(format!("{n} endpoints")),
                }
            },
        )
        .await
        .unwrap();
    }

    // us-west, still cut off, kept serving from us-east all along.
    tokio::time::sleep(2 * common::SECOND).await;
    let during = Summary::of(&load.drain());
    eprintln!("during the partition: {during:?}");
    assert_eq!(during.failed, 0, "{:?}", during.failures);
    assert!(
        during.total as f64 >= common::rate() * 2.0,
        "load too thin: {}",
        during.total
    );
    assert_eq!(
        during.in_cluster("us-east"),
        during.ok,
        "{:?}",
        during.landings
    );
    if how == Isolation::CutLinks {
        // Cut off but alive: still ready for its proxies, and it has not
        // seen the majority's change.
        isthmus_multicluster_tests::admin::ready(west_admin)
            .await
            .unwrap();
        let v = fed.registry("us-west").await.unwrap();
        assert_eq!(v.endpoints("eu-central", "default/reviews"), 2);
    }

    match how {
        Isolation::CutLinks => {
            fed.cut_links("us-west", false).unwrap();
        }
        Isolation::Freeze => fed.heal("us-west").unwrap(),
    }
    let healed = std::time::Instant::now();
    wait::until("us-west to converge", 20 * common::SECOND, || async {
        let v = fed.registry("us-west").await?;
        match v.endpoints("eu-central", "default/reviews") {
            3 => Ok(()),
            n => Err(format!("{n} endpoints")),
        }
    })
    .await
    .unwrap();
    eprintln!("us-west converged {:?} after healing", healed.elapsed());
    fed.wait_federated(&["us-east", "us-west", "eu-central"], 20 * common::SECOND)
        .await
        .unwrap();
    tokio::time::sleep(common::SECOND).await;
    let after = Summary::of(&load.finish().await);
    assert_eq!(after.failed, 0, "after healing: {:?}", after.failures);
    assert_eq!(
        after.in_cluster("us-east"),
        after.ok,
        "{:?}",
        after.landings
    );
    fed.shutdown().await;
}
