//! The control plane's side: the test Gateway, VirtualServices, ServiceEntries
//! and Secrets as YAML, run through the real translation for the ingress
//! proxy, and the resulting listeners rebound to loopback port 0.

use std::collections::BTreeMap;

use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use isthmus_control::store::ConfigSnapshot;
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, ProxyFlavor};
use isthmus_xds::{Names, Proxy, TypeUrl};
use prost::Message;

use crate::pki::{Leaf, UserCa};
use crate::translate_support;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub(crate) fn config(yaml: &str) -> ConfigSnapshot {
    translate_support::config("ingress.yaml", yaml)
}

/// The ingress gateway's xDS node as the control plane sees it.
fn ingress_proxy() -> Proxy {
    let node = translate_support::node(
        "router~127.0.0.1~ingress-1.istio-system~istio-system.svc.cluster.local",
        &[("NAMESPACE", "istio-system"), ("ISTHMUS_ROLE", "ingress")],
        &[("istio", "ingressgateway")],
    );
    Proxy::from_node(Some(&node)).expect("ingress node")
}

pub(crate) fn translated<T: Message + Default>(
    inputs: &Inputs,
    t: TypeUrl,
    names: &Names,
) -> Vec<T> {
    generate(inputs, &ingress_proxy(), ProxyFlavor::Envoy, t, names)
        .into_iter()
        .map(|r| T::decode(r.body.value.as_slice()).expect("decode"))
        .collect()
}

/// Gateway listeners rebound to port 0 on loopback, by their Gateway port.
pub(crate) fn rebind(listeners: Vec<Listener>) -> BTreeMap<u32, Listener> {
    let mut out = BTreeMap::new();
    for mut l in listeners {
        let Some(address::Address::SocketAddress(sa)) =
            l.address.as_mut().and_then(|a| a.address.as_mut())
        else {
            continue;
        };
        let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
            continue;
        };
        sa.address = "127.0.0.1".into();
        sa.port_specifier = Some(PortSpecifier::PortValue(0));
        out.insert(port, l);
    }
    out
}

pub(crate) fn gateway_yaml(a: &Leaf, b: &Leaf, client_ca: &UserCa) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: a-cred, namespace: istio-system}}
type: kubernetes.io/tls
data:
  tls.crt: {a_crt}
  tls.key: {a_key}
---
apiVersion: v1
kind: Secret
metadata: {{name: b-cred, namespace: istio-system}}
type: kubernetes.io/tls
data:
  tls.crt: {b_crt}
  tls.key: {b_key}
  ca.crt: {ca}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [a.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: 443, name: https-a, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, credentialName: a-cred}}
  - port: {{number: 443, name: https-b, protocol: HTTPS}}
    hosts: [b.example.com]
    tls: {{mode: MUTUAL, credentialName: b-cred}}
  - port: {{number: 443, name: tls-c, protocol: TLS}}
    hosts: [c.example.com]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [web.example.internal]
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: istio-system}}
spec:
  hosts: [secure.example.internal]
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: istio-system}}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: web.example.internal, port: {{number: 8080}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: secure, namespace: istio-system}}
spec:
  hosts: [c.example.com]
  gateways: [gw]
  tls:
  - match: [{{port: 443, sniHosts: [c.example.com]}}]
    route:
    - destination: {{host: secure.example.internal, port: {{number: 443}}}}
"#,
        a_crt = b64(&a.cert_pem),
        a_key = b64(&a.key_pem),
        b_crt = b64(&b.cert_pem),
        b_key = b64(&b.key_pem),
        ca = b64(&client_ca.pem),
    )
}

pub(crate) fn credential_names() -> Names {
    Names::some(["a-cred", "b-cred", "b-cred-cacert"])
}
