//! The injector's HTTPS endpoint (TLS from the cluster CA, verified as the
//! API server verifies it with the caBundle) and the capture init
//! container's rules loaded into real iptables.

mod inject_support;

use std::sync::Arc;

use inject_support::{config, fixtures, load, patched, respond};
use isthmus_control::inject::{self, review::AdmissionReview};
use k8s_openapi::api::core::v1::Pod;

/// The HTTPS endpoint as the API server uses it: TLS verified against the
/// trust domain's root (the caBundle) for the Service's DNS name.
#[tokio::test]
async fn https_endpoint_serves_reviews_with_a_ca_signed_certificate() {
    use http_body_util::{BodyExt, Full};
    use isthmus_identity::ca::{
        create_intermediate, create_root, IntermediateOptions, RootOptions,
    };

    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let root = create_root(&RootOptions::default()).unwrap();
    let mut iopts = IntermediateOptions::new("us-east");
    iopts.trust_domain = "example.org".into();
    let inter = create_intermediate(&root, &iopts).unwrap();
    isthmus_identity::files::write_plugin(dir.path(), &inter, &root.cert_pem, false).unwrap();

    let signer = inject::server::WebhookSigner::load(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = prometheus::Registry::new();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = inject::server::spawn(listener, signer, config(), &registry, async {
        let _ = stop_rx.await;
    })
    .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    for c in isthmus_identity::pem::certs_from_pem(&root.cert_pem, "root").unwrap() {
        roots.add(c).unwrap();
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));

    let post = |body: Vec<u8>, method: &'static str| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("isthmus-control.istio-system.svc")
                .unwrap();
            let stream = connector
                .connect(name, tcp)
                .await
                .expect("certificate verifies for the Service name");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri("/inject?timeout=5s")
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    let review = std::fs::read(fixtures().join("reviews-deployment-pod.request.json")).unwrap();
    let (status, body) = post(review, "POST").await;
    assert_eq!(status, 200);
    let out: AdmissionReview = serde_json::from_slice(&body).unwrap();
    let r = out.response.unwrap();
    assert!(r.allowed && r.patch.is_some());

    let (status, body) = post(b"{not json".to_vec(), "POST").await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = post(Vec::new(), "GET").await;
    assert_eq!(status, 405);

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("isthmus_injection_requests_total{result=\"injected\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("isthmus_injection_requests_total{result=\"error\"} 1"),
        "{text}"
    );

    // Another name than the Service's is refused by the client's verifier.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let wrong = rustls::pki_types::ServerName::try_from("evil.example.org").unwrap();
    assert!(connector.connect(wrong, tcp).await.is_err());

    let _ = stop_tx.send(());
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

/// Deletes the network namespace even when the test fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn tool_or_skip(tool: &str, why: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var("ISTHMUS_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {tool} not found ({why})");
        return false;
    }
    panic!("{tool} not found: {why} (.ci/run installs it), or set ISTHMUS_ALLOW_SKIP=1");
}

/// The init container's exact command and rules, run in a fresh network
/// namespace: iptables accepts them and the nat table then redirects as
/// documented.
#[test]
fn capture_init_container_loads_its_rules_into_iptables() {
    if !tool_or_skip("iptables-restore", "apt-get install iptables")
        || !tool_or_skip("ip", "apt-get install iproute2")
    {
        return;
    }
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        assert_eq!(
            std::env::var("ISTHMUS_ALLOW_SKIP").as_deref(),
            Ok("1"),
            "network namespaces need root (CI runs as root), or set ISTHMUS_ALLOW_SKIP=1"
        );
        eprintln!("SKIPPED: not root");
        return;
    }
    let review = load("redirect");
    let pod: Pod = serde_json::from_value(patched(&review, &respond(&review))).unwrap();
    let init = pod.spec.unwrap().init_containers.unwrap().remove(0);
    let command = init.command.unwrap();
    let env = init.env.unwrap().remove(0);

    let ns = Netns(format!("isthmus-inject-{}", std::process::id()));
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap();
    assert!(st.success());
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .args(&command)
        .env(&env.name, env.value.unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init container command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "iptables-save", "-t", "nat"])
        .output()
        .unwrap();
    let nat = String::from_utf8_lossy(&saved.stdout);
    for want in [
        "-A PREROUTING -p tcp -j ISTHMUS_INBOUND",
        "-A OUTPUT -p tcp -j ISTHMUS_OUTPUT",
        "-A ISTHMUS_INBOUND -p tcp -m tcp --dport 15000:15099 -j RETURN",
        "-A ISTHMUS_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTHMUS_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        "-A ISTHMUS_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A ISTHMUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTHMUS_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(nat.contains(want), "missing `{want}` in:\n{nat}");
    }
}
