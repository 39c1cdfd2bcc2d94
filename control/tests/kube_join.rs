//! A cluster joins a running federation from Kubernetes (issue 11, item 6),
//! every part a real process or a real server:
//! - the seed: `isthmus control` in file mode, a one-member federation,
//!   resolving other clusters' gateway hostnames with `--dns-upstream`
//!   pointed at a test DNS server;
//! - the token: `isthmus federation token create` for the seed, rendered
//!   by `isthmus install --join` as the `isthmus-join` Secret; the joiner's
//!   `--join-token-file` holds exactly the Secret's data;
//! - the joiner: `isthmus control --source kubernetes` against the fake API
//!   server, on another network, whose east-west LoadBalancer Service has a
//!   hostname (as AWS ELBs do).
//!
//! The joiner becomes a member, its registry record carries the hostname,
//! and the seed's EDS for the joiner's service is the resolved IP on the
//! gateway port (following a DNS change): the seed's proxies reach the
//! joiner through its load balancer. Every process is killed when its
//! guard drops, also when the test fails.

mod fake_apiserver;
mod kube_support;
#[path = "peers/cluster.rs"]
mod peers;
#[path = "../../gateway/tests/support/testdns.rs"]
mod testdns;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{address, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use kube_support::{Block, KubeControl, KubeOptions};
use peers::{path_str, run_cli, Ca, ControlPlane, Ports};
use prost::Message;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

const SEED: &str = "seed";
const JOINER: &str = "kube-joiner";
const LB_HOSTNAME: &str = "ew.k8s-cluster.test";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const REVIEWS_CLUSTER: &str = "outbound|9080||reviews.shop.svc.cluster.local";
/// A sidecar of the seed cluster (its network is the seed's).
const SEED_PROXY: &str = "sidecar~10.1.0.9~sleep-1.default~default.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(40);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the CLI off the runtime's worker threads.
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args)
    })
    .await
    .expect("CLI thread")
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `isthmus federation token create` for the seed's federation.
async fn join_token(ca: &Ca, seed: &Ports) -> String {
    let root = ca.root.join("root-cert.pem");
    let out = cli(args(&[
        "federation",
        "token",
        "create",
        "--root-cert",
        path_str(&root),
        "--seed",
        &format!("{SEED}=127.0.0.1:{}", seed.federation),
    ]))
    .await;
    assert!(out.status.success(), "token create: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("the token is UTF-8")
}

/// What `isthmus install --join TOKEN` gives the joining control plane:
/// the `isthmus-join` Secret's data, checked to be mounted where the
/// Deployment's `--join-token-file` points.
async fn token_file_content(token: &str) -> String {
    let out = cli(args(&[
        "install",
        "--cluster",
        JOINER,
        "--network",
        "net2",
        "--locality",
        "region1/zone-kube",
        "--trust-domain",
        "cluster.local",
        "--join",
        token.trim(),
        // Only the Deployment's arguments use it; the joiner below runs on
        // loopback and advertises its listen address.
        "--federation-advertise",
        "federation.kube-joiner.example:15031",
    ]))
    .await;
    assert!(out.status.success(), "install --join: {}", stderr(&out));
    let text = String::from_utf8(out.stdout).expect("manifests are UTF-8");
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the install output"))
    };
    let secret = find("Secret", "isthmus-join");
    let data = secret["stringData"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("the Secret has no stringData.token: {secret}"))
        .to_string();

    // The control plane reads it from the Secret's volume.
    let pod = &find("Deployment", "isthmus-control")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let file = args
        .windows(2)
        .find(|w| w[0] == "--join-token-file")
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("no --join-token-file in {args:?}"));
    let (dir, key) = file.rsplit_once('/').expect("an absolute path");
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == dir))
        .unwrap_or_else(|| panic!("nothing mounted at {dir}: {container}"));
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    assert_eq!(volume["secret"]["secretName"], "isthmus-join", "{volume}");
    let items = volume["secret"]["items"].as_array();
    assert!(
        items.is_none_or(|items| items
            .iter()
            .any(|i| i["key"] == "token" && i["path"] == key)),
        "the Secret's `token` key must be the file {key}: {volume}"
    );
    assert_eq!(key, "token", "the file is the Secret's `token` key");
    data
}

/// The seed's federation members, by name → role (`federation status -o json`).
async fn members(seed: &Ports) -> Option<Vec<(String, String)>> {
    let out = cli(args(&[
        "federation",
        "status",
        "--admin",
        &seed.admin_url(),
        "-o",
        "json",
    ]))
    .await;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["role"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    )
}

/// The joiner's record in the seed's registry (`/debug/registry`).
async fn seed_record_of_joiner(seed: &Ports) -> Option<Value> {
    let url = format!("{}/debug/registry", seed.admin_url());
    let body = tokio::task::spawn_blocking(move || peers::http_get(&url))
        .await
        .ok()??;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["clusters"].get(JOINER).cloned()
}

/// An ADS stream on the seed's plaintext xDS port, as a seed sidecar
/// subscribed to the joiner's service: EDS only, ACKing every response.
struct EdsWatch {
    tx: tokio::sync::mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl EdsWatch {
    async fn open(seed: &Ports) -> EdsWatch {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", seed.plaintext_addr()))
                .await
                .expect("connect to the seed's plaintext xDS port");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: Some(Node {
                id: SEED_PROXY.into(),
                ..Default::default()
            }),
            type_url: EDS.into(),
            resource_names: vec![REVIEWS_CLUSTER.into()],
            ..Default::default()
        })
        .await
        .expect("queue the subscription");
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("ADS stream")
            .into_inner();
        EdsWatch { tx, responses }
    }

    /// Reads (and ACKs) responses until the reviews endpoints are exactly
    /// `want`. Every address ever sent must be an IP: Envoy rejects a
    /// hostname in EDS, and an unresolved gateway name must never get there.
    async fn wait_for(&mut self, want: &BTreeSet<String>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = BTreeSet::new();
        loop {
            let next = tokio::time::timeout_at(deadline, self.responses.message()).await;
            let resp = match next {
                Ok(Ok(Some(r))) => r,
                Ok(other) => panic!("the seed's ADS stream ended: {other:?}"),
                Err(_) => panic!(
                    "timed out after {WAIT:?} waiting for the seed's EDS for {REVIEWS_CLUSTER} to be {want:?}; last: {last:?}"
                ),
            };
            self.tx
                .send(DiscoveryRequest {
                    type_url: EDS.into(),
                    version_info: resp.version_info.clone(),
                    response_nonce: resp.nonce.clone(),
                    resource_names: vec![REVIEWS_CLUSTER.into()],
                    ..Default::default()
                })
                .await
                .expect("ACK");
            for any in &resp.resources {
                let cla = ClusterLoadAssignment::decode(any.value.as_slice())
                    .expect("a ClusterLoadAssignment");
                if cla.cluster_name != REVIEWS_CLUSTER {
                    continue;
                }
                last = endpoints(&cla);
            }
            if &last == want {
                return;
            }
        }
    }
}

/// `ip:port` of every endpoint of `cla`, checking each address is an IP.
fn endpoints(cla: &ClusterLoadAssignment) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for lb in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
            continue;
        };
        let Some(address::Address::SocketAddress(sa)) =
            e.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            panic!("an endpoint without a socket address: {e:?}");
        };
        assert!(
            sa.address.parse::<IpAddr>().is_ok(),
            "EDS must carry IP addresses, got {:?}",
            sa.address
        );
        let port = match sa.port_specifier {
            Some(PortSpecifier::PortValue(p)) => p,
            _ => 0,
        };
        out.insert(format!("{}:{port}", sa.address));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_cluster_joins_and_is_reached_through_its_load_balancer_hostname() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let dns = testdns::TestDns::start().await;
    let lb_ip: IpAddr = "198.51.100.23".parse().expect("IP");
    dns.set(LB_HOSTNAME, &[lb_ip], 1);

    // The seed: a one-member federation in file mode.
    let ca = Ca::new(dir);
    let seed = Ports::pick(SEED);
    let mut seed_cp = ControlPlane::start_with_args(
        &seed,
        &ca,
        dir,
        &peers::mesh_config(&seed, &[&seed]),
        &args(&["--dns-upstream", &dns.addr.to_string()]),
    );
    tokio::task::block_in_place(|| {
        seed_cp.wait_status("the seed leads its federation", WAIT, |s| {
            s["federation"]["role"] == "leader"
        })
    });

    // The token, through the install's Secret, into the joiner's file.
    let token = join_token(&ca, &seed).await;
    let content = token_file_content(&token).await;
    assert_eq!(content, token.trim(), "the Secret holds the token as made");
    let token_file = dir.join("join-token");
    std::fs::write(&token_file, &content).expect("write the token file");

    // The joiner, in Kubernetes mode on another network.
    let started = Instant::now();
    let joiner = KubeControl::launch(
        dir,
        &Block(252),
        JOINER,
        KubeOptions {
            ca: Some(Ca {
                root: ca.root.clone(),
            }),
            network: "net2".into(),
            extra_args: args(&["--join-token-file", path_str(&token_file)]),
        },
    )
    .await;
    // Its cloud load balancer comes up with a DNS name only.
    let mut gw = joiner
        .server
        .get("v1", "Service", "istio-system", "isthmus-eastwestgateway")
        .expect("the east-west Service fixture");
    gw["status"] = json!({"loadBalancer": {"ingress": [{"hostname": LB_HOSTNAME}]}});
    joiner.server.put(gw.clone());

    // A member of the seed's federation.
    let roles = kube_support::wait_for("the joiner among the seed's members", WAIT, || async {
        members(&seed)
            .await
            .filter(|m| m.iter().any(|(name, _)| name == JOINER))
    })
    .await;
    let member_after = started.elapsed();
    let role = roles
        .iter()
        .find(|(name, _)| name == JOINER)
        .map(|(_, r)| r.as_str());
    assert!(
        matches!(role, Some("voter" | "learner")),
        "the joiner is a member with a cluster behind it: {roles:?}"
    );

    // Its record in the seed's registry: the hostname, as published.
    let record = kube_support::wait_for(
        "the joiner's LB hostname in the seed's registry",
        WAIT,
        || async {
            seed_record_of_joiner(&seed)
                .await
                .filter(|r| r["eastwest_tcp"] == json!([format!("{LB_HOSTNAME}:15443")]))
        },
    )
    .await;
    assert_eq!(record["network"], "net2", "{record}");
    assert_eq!(
        record["eastwest_quic"],
        json!([format!("{LB_HOSTNAME}:15443")]),
        "{record}"
    );

    // The seed's EDS for the joiner's service: the LB's resolved address on
    // the gateway port, never the name.
    let mut eds = EdsWatch::open(&seed).await;
    eds.wait_for(&BTreeSet::from([format!("{lb_ip}:15443")]))
        .await;
    let eds_after = started.elapsed();
    assert!(
        dns.asked().iter().any(|n| n == LB_HOSTNAME),
        "the seed asked its --dns-upstream: {:?}",
        dns.asked()
    );
    let dump = cli(args(&[
        "proxy-config",
        SEED_PROXY,
        "endpoints",
        "--admin",
        &seed.admin_url(),
        "-o",
        "json",
    ]))
    .await;
    assert!(dump.status.success(), "proxy-config: {}", stderr(&dump));
    let dump: Value = serde_json::from_slice(&dump.stdout).expect("JSON");
    let reviews = dump
        .as_array()
        .and_then(|d| d.iter().find(|r| r["name"] == REVIEWS_CLUSTER))
        .unwrap_or_else(|| panic!("no {REVIEWS_CLUSTER} in the dump: {dump}"));
    assert!(
        reviews["summary"]
            .as_array()
            .is_some_and(|s| s.iter().any(|l| l
                .as_str()
                .is_some_and(|l| l.contains(&format!("{lb_ip}:15443"))))),
        "proxy-config shows the LB address: {reviews}"
    );

    // The balancer's address changes behind the same name: EDS follows
    // once the (clamped) TTL runs out, without any registry change.
    let moved: IpAddr = "198.51.100.24".parse().expect("IP");
    dns.set(LB_HOSTNAME, &[moved], 1);
    let moved_at = Instant::now();
    eds.wait_for(&BTreeSet::from([format!("{moved}:15443")]))
        .await;
    eprintln!(
        "joiner a member {member_after:?} after its start, seed EDS with its LB {eds_after:?}; a DNS change reached EDS in {:?}",
        moved_at.elapsed()
    );

    drop(joiner);
    drop(seed_cp);
}
