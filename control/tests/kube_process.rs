//! `isthmus control --source kubernetes --kubeconfig FILE` as a real child
//! process against the fake API server (real HTTP, fixtures of real
//! objects), with real `isthmus gateway` sidecars and echo workloads on
//! loopback:
//! - a call through one sidecar reaches the backend the VirtualService
//!   picks, and follows an EndpointSlice change (a watch event);
//! - the ServiceExport's conditions, the webhook's caBundle and the east-west
//!   gateway's LoadBalancer address are written where they belong.
//!
//! Every process is killed when its guard drops, also when a test fails.

mod fake_apiserver;
mod kube_support;
#[path = "peers/cluster.rs"]
mod peers;

use std::net::SocketAddr;

use base64::Engine;
use fake_apiserver::FakeApiServer;
use kube_support::{get, pick_block, wait_for, Block, KubeControl, APP_PORT, WAIT};
use serde_json::{json, Value};

const REVIEWS: &str = "reviews.shop.svc.cluster.local";

/// The pod (echo `zone`) that answered a call to reviews through the
/// productpage sidecar, as `user`.
async fn reviews_answer(block: &Block, user: Option<&str>) -> Option<String> {
    let headers: Vec<(&str, &str)> = user.map(|u| ("end-user", u)).into_iter().collect();
    let (status, body) = get(
        SocketAddr::new(block.outbound(1), APP_PORT),
        REVIEWS,
        "/reviews/0",
        &headers,
    )
    .await?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["zone"].as_str().map(str::to_string)
}

/// A TLS handshake with the webhook as the API server makes it: trusting
/// only `bundle`, for `isthmus-control.istio-system.svc`.
async fn handshake_with_bundle(port: u16, bundle: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in isthmus_identity::pem::certs_from_pem(bundle, "caBundle").expect("bundle PEM") {
        roots.add(cert).expect("bundle certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the webhook");
    let name = rustls::pki_types::ServerName::try_from("isthmus-control.istio-system.svc")
        .expect("server name");
    connector
        .connect(name, tcp)
        .await
        .expect("the caBundle verifies the webhook's certificate");
}

const PRODUCTPAGE: &str = "productpage-v1-5d9b8c-qq2lr";
const REVIEWS_V1: &str = "reviews-v1-7c9d8f-x4k2p";
const REVIEWS_V2: &str = "reviews-v2-6b4f7d-m8n3z";
const REVIEWS_V2_NEW: &str = "reviews-v2-6b4f7d-r5t9w";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_the_virtual_service_and_endpoint_slice_changes() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let block = Block(pick_block());
    let control = KubeControl::start(tmp.path(), &block, "kube-east").await;
    let _workloads = [
        control.workload(&block, 1, PRODUCTPAGE, "productpage", "v1"),
        control.workload(&block, 2, REVIEWS_V1, "reviews", "v1"),
        control.workload(&block, 3, REVIEWS_V2, "reviews", "v2"),
        control.workload(&block, 4, REVIEWS_V2_NEW, "reviews", "v2"),
    ];

    // Default route: subset v1; `end-user: jason`: subset v2.
    wait_for("a call to reviews to reach v1", WAIT, || async {
        reviews_answer(&block, None)
            .await
            .filter(|pod| pod == REVIEWS_V1)
    })
    .await;
    wait_for("jason's call to reach v2", WAIT, || async {
        reviews_answer(&block, Some("jason"))
            .await
            .filter(|pod| pod == REVIEWS_V2)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            reviews_answer(&block, None).await.as_deref(),
            Some(REVIEWS_V1),
            "the default route must keep going to v1"
        );
    }

    // A rollout: the EndpointSlice now lists the new v2 pod instead of the
    // old one (a MODIFIED watch event); traffic follows.
    let mut slice = control
        .server
        .get(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            "shop",
            "reviews-8wxlm",
        )
        .expect("the reviews slice");
    let endpoints = slice["endpoints"].as_array_mut().expect("endpoints");
    let old = endpoints
        .iter_mut()
        .find(|e| e["targetRef"]["name"] == REVIEWS_V2)
        .expect("the old v2 endpoint");
    old["addresses"] = json!([block.pod(4).to_string()]);
    old["targetRef"]["name"] = json!(REVIEWS_V2_NEW);
    old["targetRef"]["uid"] = json!(format!("pod-uid-{REVIEWS_V2_NEW}"));
    slice["metadata"]
        .as_object_mut()
        .map(|m| m.remove("resourceVersion"));
    control.server.put(slice);
    wait_for("jason's call to reach the new v2 pod", WAIT, || async {
        reviews_answer(&block, Some("jason"))
            .await
            .filter(|pod| pod == REVIEWS_V2_NEW)
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            reviews_answer(&block, Some("jason")).await.as_deref(),
            Some(REVIEWS_V2_NEW),
            "the old v2 pod left the slice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_ca_bundle_and_load_balancer_address() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let block = Block(pick_block());
    let control = KubeControl::start(tmp.path(), &block, "kube-west").await;
    let server = &control.server;
    let root = std::fs::read_to_string(control.ca.root.join("root-cert.pem")).expect("root");

    // ServiceExport conditions, by server-side apply on the status.
    wait_for("the ServiceExport's Valid condition", WAIT, || async {
        let export = server.get(
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceExport",
            "shop",
            "reviews",
        )?;
        let conditions = export["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .any(|c| c["type"] == "Valid" && c["status"] == "True")
            .then_some(())
    })
    .await;
    let applied = |path_part: &str| {
        server
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.contains(path_part))
            .collect::<Vec<_>>()
    };
    let status_patches = applied("/serviceexports/reviews/status");
    assert!(!status_patches.is_empty());
    for p in &status_patches {
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(
            p.query.get("fieldManager").map(String::as_str),
            Some("isthmus")
        );
    }

    // The webhook's caBundle: every webhook gets the root, by SSA, and only
    // that field is sent (the rest stays with `kubectl apply`'s manager).
    let webhook_config = |server: &FakeApiServer| {
        server
            .get(
                "admissionregistration.k8s.io/v1",
                "MutatingWebhookConfiguration",
                "",
                "isthmus-sidecar-injector",
            )
            .expect("the webhook configuration")
    };
    let expected = base64::engine::general_purpose::STANDARD.encode(&root);
    wait_for("the caBundle on every webhook", WAIT, || async {
        let cfg = webhook_config(server);
        let hooks = cfg["webhooks"].as_array()?.clone();
        (hooks.len() == 3
            && hooks
                .iter()
                .all(|w| w["clientConfig"]["caBundle"] == expected.as_str()))
        .then_some(())
    })
    .await;
    let cfg = webhook_config(server);
    for w in cfg["webhooks"].as_array().expect("webhooks") {
        assert_eq!(w["failurePolicy"], "Ignore", "other fields are kept: {w}");
        assert_eq!(w["clientConfig"]["service"]["name"], "isthmus-control");
    }
    let bundle_patches = applied("/mutatingwebhookconfigurations/isthmus-sidecar-injector");
    assert_eq!(bundle_patches.len(), 1, "one apply, then nothing to do");
    let p = &bundle_patches[0];
    assert_eq!(
        p.query.get("fieldManager").map(String::as_str),
        Some("isthmus")
    );
    assert_eq!(p.query.get("force").map(String::as_str), Some("true"));
    let sent = p.body.as_ref().expect("apply body");
    assert_eq!(
        sent["webhooks"][0].as_object().map(|o| o.len()),
        Some(2),
        "only name and clientConfig.caBundle: {sent}"
    );
    // Someone recreates the configuration without a bundle (`kubectl
    // apply` of the install): the control plane puts it back.
    let mut stripped = webhook_config(server);
    for w in stripped["webhooks"].as_array_mut().expect("webhooks") {
        w["clientConfig"]
            .as_object_mut()
            .map(|c| c.remove("caBundle"));
    }
    server.put(stripped);
    wait_for("the caBundle to be restored", WAIT, || async {
        let cfg = webhook_config(server);
        cfg["webhooks"]
            .as_array()?
            .iter()
            .all(|w| w["clientConfig"]["caBundle"] == expected.as_str())
            .then_some(())
    })
    .await;
    // The bundle verifies the webhook's serving certificate, for the name
    // the API server uses.
    let sent_bundle = base64::engine::general_purpose::STANDARD
        .decode(expected.as_bytes())
        .expect("base64");
    handshake_with_bundle(control.webhook, &String::from_utf8_lossy(&sent_bundle)).await;

    // The east-west gateway's LoadBalancer address: none yet, then an IP,
    // then a hostname (a balancer replaced by one with a DNS name).
    let record = wait_for("this cluster's registry record", WAIT, || {
        control.registry_record()
    })
    .await;
    assert_eq!(
        record["eastwest_tcp"],
        json!([]),
        "no address before the balancer has one: {record}"
    );
    let mut gw = server
        .get("v1", "Service", "istio-system", "isthmus-eastwestgateway")
        .expect("the east-west Service");
    gw["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7", "ipMode": "VIP"}]}});
    server.put(gw.clone());
    wait_for("the LoadBalancer IP in the registry", WAIT, || async {
        let r = control.registry_record().await?;
        (r["eastwest_tcp"] == json!(["203.0.113.7:15443"])
            && r["eastwest_quic"] == json!(["203.0.113.7:15443"]))
        .then_some(())
    })
    .await;
    gw["status"] = json!({"loadBalancer": {"ingress": [
        {"hostname": "a1b2c3.elb.eu-west-1.amazonaws.com"}
    ]}});
    server.put(gw);
    wait_for(
        "the LoadBalancer hostname in the registry",
        WAIT,
        || async {
            let r = control.registry_record().await?;
            (r["eastwest_tcp"] == json!(["a1b2c3.elb.eu-west-1.amazonaws.com:15443"])).then_some(())
        },
    )
    .await;
    // The rest of the record is the exporter's, untouched.
    let r = control.registry_record().await.expect("record");
    assert_eq!(r["network"], "net1");
    assert!(r["intermediate_pem"]
        .as_str()
        .is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
}
