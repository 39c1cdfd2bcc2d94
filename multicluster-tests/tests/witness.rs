//! Two clusters plus a federation witness (active/passive disaster
//! recovery): each cluster's productpage prefers the other cluster's
//! reviews (its active side) and falls back to its own. Losing either
//! cluster (kill -9 of all its processes) leaves the survivor and the
//! witness a Raft quorum: a config change in the survivor is committed to
//! the registry and reaches its proxies' EDS, the survivor's traffic is
//! served locally with no failed request, and the lost cluster, restarted,
//! catches up with the write it missed.

mod common;

use std::time::Duration;

use isthmus_multicluster_tests::{
    admin, wait, ClusterSpec, Federation, FederationSpec, Load, ServiceSpec, Summary, WorkloadSpec,
    READY_LIMIT,
};
use tokio::time::Instant;

/// `cluster`'s productpage prefers `active`'s endpoints, then the rest.
fn prefer(active: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        failoverPriority:
        - topology.kubernetes.io/region={active}
    # Connection failures eject the dead cluster's gateway at once, so
    # its priority empties and the next one serves.
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 10s
"
    )
}

fn cluster(name: &str, active: &str) -> ClusterSpec {
    let mut reviews = ServiceSpec::new("reviews", 9080);
    reviews.protocol = "HTTP".into();
    let ratings = ServiceSpec::new("ratings", 9081);
    let mut productpage = ServiceSpec::new("productpage", 9090);
    productpage.protocol = "HTTP".into();
    productpage.export = false;
    ClusterSpec::new(name, name, &format!("{name}-a"))
        .service(reviews)
        .service(ratings)
        .service(productpage)
        .workload(WorkloadSpec::new("productpage", "v1"))
        .workload(WorkloadSpec::new("reviews", "v1"))
        .workload(WorkloadSpec::new("ratings", "v1"))
        .config("prefer.yaml", &prefer(active))
        .config(
            "retries.yaml",
            &isthmus_multicluster_tests::scenario::retry_virtual_service("reviews", "default", &[]),
        )
}

/// One more ratings instance in `cluster` (no process behind it: only the
/// registry and EDS are looked at).
fn extra_ratings(fed: &Federation, cluster: &str) -> (String, String) {
    let ip = fed
        .cluster(cluster)
        .unwrap()
        .block
        .workload_ip(9)
        .to_string();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: ratings-extra
  namespace: default
spec:
  address: {ip}
  serviceAccount: bookinfo-ratings
  labels:
    app: ratings
    version: v9
"
    );
    (ip, yaml)
}

async fn lose_and_recover(fed: &mut Federation, victim: &str, survivor: &str) {
    fed.wait_lands(survivor, "productpage-v1", "reviews", victim, READY_LIMIT)
        .await
        .unwrap();
    let load = Load::start(
        fed.load(survivor, "productpage-v1", "reviews", 100.0)
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let victim_led = matches!(fed.raft_status(victim).await, Ok((r, _)) if r == "Leader");
    let killed = Instant::now();
    fed.kill_cluster(victim).await.unwrap();

    // The registry stays writable: the survivor's new endpoint is committed
    // (a quorum of the survivor and the witness) and applied.
    let (ip, yaml) = extra_ratings(fed, survivor);
    fed.write_config(survivor, "extra-ratings.yaml", &yaml)
        .unwrap();
    wait::until(
        &format!("{survivor}'s registry write to commit without {victim}"),
        Duration::from_secs(20),
        || async {
            let v = fed.registry(survivor).await?;
            match v.endpoints(survivor, "default/ratings") {
                2 => Ok(()),
                n => Err(format!(
                    "{n} ratings endpoints of {survivor} in the registry"
                )),
            }
        },
    )
    .await
    .unwrap_or_else(|t| panic!("{t}\n{}", fed.log_tails(10)));
    let committed_after = killed.elapsed();
    // ...and it reaches the survivor's proxies over EDS.
    let admin = fed.cluster(survivor).unwrap().block.workload_admin(1);
    wait::until(
        "the new endpoint in productpage's EDS",
        Duration::from_secs(10),
        || async {
            let dump = admin::get(admin, "/config_dump")
                .await
                .map_err(|e| e.to_string())?;
            if dump.contains(&ip) {
                Ok(())
            } else {
                Err(format!("{ip} not in productpage's config"))
            }
        },
    )
    .await
    .unwrap();

    // At least 4 s of load after the kill, however fast the write was.
    let until = (killed + Duration::from_secs(4)).max(Instant::now() + Duration::from_secs(1));
    tokio::time::sleep_until(until).await;
    let outcomes = load.finish().await;
    let before = Summary::of(outcomes.iter().filter(|o| o.end < killed));
    let after = Summary::of(outcomes.iter().filter(|o| o.start >= killed));
    let in_flight = outcomes
        .iter()
        .filter(|o| o.start < killed && o.end >= killed && !o.ok())
        .count();
    eprintln!(
        "lost {victim} (led the federation: {victim_led}); write committed {committed_after:?} after the kill\nbefore: {before:#?}\nafter: {after:#?}"
    );
    assert!(before.share(victim) >= 0.95, "{:?}", before.landings);
    assert_eq!(before.failed, 0, "{:?}", before.failures);
    assert!(after.total >= 300, "load too thin: {after:?}");
    assert_eq!(after.failed, 0, "{:?}", after.failures);
    assert_eq!(in_flight, 0, "requests in flight at the kill failed");
    assert_eq!(after.in_cluster(survivor), after.ok, "{:?}", after.landings);

    // The lost cluster comes back and has the write it missed.
    fed.restart_cluster(victim).await.unwrap();
    fed.wait_federated(&[victim, survivor], READY_LIMIT)
        .await
        .unwrap();
    wait::until(
        &format!("{victim} to catch up with {survivor}'s write"),
        Duration::from_secs(20),
        || async {
            let v = fed.registry(victim).await?;
            match v.endpoints(survivor, "default/ratings") {
                2 => Ok(()),
                n => Err(format!("{victim} sees {n} ratings endpoints of {survivor}")),
            }
        },
    )
    .await
    .unwrap();
    fed.wait_proxies_ready(&[victim], READY_LIMIT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_and_a_witness_survive_the_loss_of_either_cluster() {
    let mut spec = FederationSpec::new(vec![cluster("east", "west"), cluster("west", "east")]);
    spec.witness = Some("witness".into());
    if let Ok(filter) = std::env::var("ISTHMUS_TEST_LOG") {
        spec.log_filter = filter;
    }
    let mut fed = Federation::start_for_tests(spec).await.unwrap();
    fed.wait_ready(READY_LIMIT).await.unwrap();
    lose_and_recover(&mut fed, "east", "west").await;
    lose_and_recover(&mut fed, "west", "east").await;
    fed.shutdown().await;
}
