//! One ingress gateway configured from the translation, checked end to end:
//! SIMPLE termination with a certificate per SNI host, MUTUAL client
//! verification, PASSTHROUGH, `httpsRedirect`, `curl` as an independent
//! client, a malformed credential NACKed, and a rotated credential.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, Secret, TlsCertificate,
};
use isthmus_control::translate::{Inputs, LocalSettings};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, TypeUrl};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::clients::{curl, dns_name, https_get, tls_client};
use crate::harness::{sds, serve, tls_backend};
use crate::pki::UserCa;
use crate::support::http::{client, get, HttpBackend};
use crate::support::resources::SDS;
use crate::support::{gateway, WAIT};
use crate::translation::{config, credential_names, gateway_yaml, rebind, translated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_tls_sni_mutual_passthrough_and_redirect_from_control_translation() {
    let server_ca = UserCa::new("ingress test server CA");
    let client_ca = UserCa::new("ingress test client CA");
    let other_ca = UserCa::new("someone else's CA");
    let a = server_ca.leaf("a.example.com", false);
    let b = server_ca.leaf("b.example.com", false);
    let c = server_ca.leaf("c.example.com", false);
    let good_client = client_ca.leaf("client.example.com", true);
    let bad_client = other_ca.leaf("client.example.com", true);

    let inputs = Inputs::new(
        Arc::new(config(&gateway_yaml(&a, &b, &client_ca))),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    let listeners = rebind(translated(&inputs, TypeUrl::Listener, &Names::All));
    assert!(
        listeners.contains_key(&443) && listeners.contains_key(&80),
        "listeners for 80 and 443: {:?}",
        listeners.keys()
    );
    let routes: Vec<RouteConfiguration> =
        translated(&inputs, TypeUrl::RouteConfiguration, &Names::All);
    let secrets: Vec<Secret> = translated(&inputs, TypeUrl::Secret, &credential_names());
    assert_eq!(
        secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["a-cred", "b-cred", "b-cred-cacert"],
        "every credential is served from the Secrets"
    );

    // Backends: HTTP for the terminated hosts, TLS for passthrough.
    let web = HttpBackend::start("web").await;
    let (secure, secure_task) = tls_backend(&c).await;
    let ads = serve(&listeners, &routes, secrets, web.addr, secure).await;
    let gw = gateway(&ads, "ingress", None).await;
    assert!(
        gw.wait_ready(WAIT).await,
        "ingress gateway never became ready"
    );
    let https = gw
        .listener_address(&listeners[&443].name)
        .expect("443 bound");
    let plain = gw.listener_address(&listeners[&80].name).expect("80 bound");

    // SIMPLE: each host gets its own certificate, chosen by SNI.
    let (status, body, presented) = https_get(https, "a.example.com", &server_ca.pem, None)
        .await
        .expect("a.example.com over TLS");
    assert_eq!((status, body.as_str()), (200, "web"));
    assert_eq!(presented, "a.example.com");
    // An SNI no server claims is refused (no chain).
    let unknown = https_get(https, "x.example.com", &server_ca.pem, None).await;
    assert!(
        unknown.is_err(),
        "unknown SNI must not be served: {unknown:?}"
    );

    // MUTUAL: the CA from the Secret's ca.crt (served as b-cred-cacert).
    let without = https_get(https, "b.example.com", &server_ca.pem, None).await;
    assert!(
        without.is_err(),
        "MUTUAL without a client certificate: {without:?}"
    );
    let wrong = https_get(https, "b.example.com", &server_ca.pem, Some(&bad_client)).await;
    assert!(
        wrong.is_err(),
        "MUTUAL with a foreign client certificate: {wrong:?}"
    );
    let (status, body, presented) =
        https_get(https, "b.example.com", &server_ca.pem, Some(&good_client))
            .await
            .expect("MUTUAL with a valid client certificate");
    assert_eq!(
        (status, body.as_str(), presented.as_str()),
        (200, "web", "b.example.com")
    );

    // PASSTHROUGH: the backend's own certificate and bytes arrive untouched.
    let tcp = TcpStream::connect(https).await.expect("connect");
    let mut tls = tls_client(&server_ca.pem, None)
        .connect(ServerName::try_from("c.example.com").expect("name"), tcp)
        .await
        .expect("handshake with the passthrough backend");
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| dns_name(c.as_ref()))
        .unwrap_or_default();
    assert_eq!(presented, "c.example.com");
    let mut line = String::new();
    let _ = tls.read_to_string(&mut line).await;
    assert_eq!(line, "passthrough backend\n");

    // httpsRedirect on the plaintext server.
    let (status, headers, _) = get(&client(), plain, "a.example.com", "/x?y=1", &[]).await;
    assert_eq!(status.as_u16(), 301);
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some("https://a.example.com/x?y=1")
    );

    // An independent client.
    let dir = tempfile::tempdir().expect("tmp");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &server_ca.pem).expect("write ca");
    match curl(https, "a.example.com", &ca_file).await {
        Ok(body) => assert_eq!(body, "web"),
        Err(e) => panic!("curl through the ingress failed: {e}"),
    }

    // A malformed credential update is NACKed; the last good one stays.
    let inline = |text: &str| {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(text.to_string())),
            ..Default::default()
        })
    };
    let broken = Secret {
        name: "a-cred".into(),
        // a.example.com's certificate with b.example.com's key.
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(&a.cert_pem),
            private_key: inline(&b.key_pem),
            ..Default::default()
        })),
    };
    let mut next = sds(translated(&inputs, TypeUrl::Secret, &credential_names()));
    next.retain(|(n, _)| n != "a-cred");
    next.push(("a-cred".into(), envoy_types::util::pack_any(broken)));
    ads.set(SDS, next);
    let nacked = ads
        .wait_request(WAIT, |r| {
            r.type_url == SDS
                && r.error_detail
                    .as_ref()
                    .is_some_and(|e| e.message.contains("a-cred"))
        })
        .await;
    assert!(nacked.is_some(), "the malformed credential was not NACKed");
    let (status, _, presented) = https_get(https, "a.example.com", &server_ca.pem, None)
        .await
        .expect("a.example.com still served with the last good certificate");
    assert_eq!((status, presented.as_str()), (200, "a.example.com"));

    // A rotated credential takes effect for new handshakes.
    let rotated_ca = UserCa::new("rotated server CA");
    let a2 = rotated_ca.leaf("a.example.com", false);
    let yaml = gateway_yaml(&a2, &b, &client_ca);
    let inputs2 = Inputs::new(
        Arc::new(config(&yaml)),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    ads.set(
        SDS,
        sds(translated(&inputs2, TypeUrl::Secret, &credential_names())),
    );
    assert!(
        ads.wait_ack(SDS, WAIT).await,
        "rotated credential not accepted"
    );
    let rotated = https_get(https, "a.example.com", &rotated_ca.pem, None).await;
    assert!(
        rotated.is_ok(),
        "rotated certificate not presented: {rotated:?}"
    );
    drop(gw);
    secure_task.abort();
}
