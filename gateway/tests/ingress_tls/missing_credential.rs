//! A Gateway server whose credential Secret is missing: the ingress still
//! becomes ready and only the handshakes needing that credential fail.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use isthmus_control::translate::{Inputs, LocalSettings};
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Names, TypeUrl};

use crate::clients::https_get;
use crate::harness::{serve, tls_backend};
use crate::pki::UserCa;
use crate::support::http::HttpBackend;
use crate::support::{init, node, WAIT};
use crate::translation::{config, credential_names, gateway_yaml, rebind, translated};

/// A Gateway server whose `credentialName` Secret does not exist: as with
/// Envoy's SDS initial fetch timeout, the gateway still becomes ready,
/// serves the hosts whose credentials exist, and fails only the handshakes
/// that need the missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_credential_does_not_keep_the_ingress_unready() {
    let server_ca = UserCa::new("ingress test server CA");
    let client_ca = UserCa::new("ingress test client CA");
    let a = server_ca.leaf("a.example.com", false);
    let b = server_ca.leaf("b.example.com", false);
    let c = server_ca.leaf("c.example.com", false);
    let inputs = Inputs::new(
        Arc::new(config(&gateway_yaml(&a, &b, &client_ca))),
        Arc::new(RegistrySnapshot::default()),
        LocalSettings::default(),
    );
    let listeners = rebind(translated(&inputs, TypeUrl::Listener, &Names::All));
    let routes: Vec<RouteConfiguration> =
        translated(&inputs, TypeUrl::RouteConfiguration, &Names::All);
    // b-cred's Secret is gone: only a-cred is served.
    let secrets: Vec<Secret> = translated(&inputs, TypeUrl::Secret, &credential_names())
        .into_iter()
        .filter(|s: &Secret| s.name == "a-cred")
        .collect();
    let web = HttpBackend::start("web").await;
    let (secure, _secure_task) = tls_backend(&c).await;
    let ads = serve(&listeners, &routes, secrets, web.addr, secure).await;

    init();
    let mut cfg = isthmus_gateway::GatewayConfig::new(
        ads.url(),
        node(
            "ingress~127.0.0.1~x.default~default.svc.cluster.local",
            "ingress",
        ),
        "127.0.0.1:0".parse().expect("addr"),
    );
    cfg.secret_warm_timeout = Duration::from_secs(1);
    let gw = isthmus_gateway::Gateway::start(cfg)
        .await
        .expect("gateway start");
    assert!(
        gw.wait_ready(WAIT).await,
        "a missing credential kept the ingress gateway unready"
    );
    let https = gw
        .listener_address(&listeners[&443].name)
        .expect("443 bound");
    let (status, body, presented) = https_get(https, "a.example.com", &server_ca.pem, None)
        .await
        .expect("the host with a credential is served");
    assert_eq!(
        (status, body.as_str(), presented.as_str()),
        (200, "web", "a.example.com")
    );
    let missing = https_get(https, "b.example.com", &server_ca.pem, None).await;
    assert!(
        missing.is_err(),
        "the host without its credential must fail its handshake: {missing:?}"
    );
}
