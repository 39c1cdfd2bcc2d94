//! One sidecar per configuration, built the way production builds it:
//! Istio YAML → the control plane's config parser and translation
//! (`generate`, the same code the control plane serves over ADS) → a real
//! ADS stream → an in-process gateway whose STRICT mTLS inbound listener
//! forwards to a real HTTP backend. Certificates come from the identity
//! crate's CA (root → cluster intermediate → leaves from locally made CSRs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use isthmus_control::source::parse_text;
use isthmus_control::store::{ConfigSnapshot, StoredResource};
use isthmus_control::translate::generator::generate;
use isthmus_control::translate::{Inputs, LocalSettings, ProxyFlavor};
use isthmus_federation::RegistrySnapshot;
use isthmus_gateway::config::SanMatcher;
use isthmus_gateway::tls::{SpiffeVerifier, WorkloadCertificate};
use isthmus_gateway::Gateway;
use isthmus_identity::ca::{
    create_intermediate, create_root, Authority, IntermediateOptions, LeafPolicy, RootOptions,
};
use isthmus_identity::SpiffeId;
use isthmus_xds::{Names, Proxy, TypeUrl};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use prost::Message;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use crate::support::ads::ScriptedAds;
use crate::support::resources::*;
use crate::support::{gateway, WAIT};
use crate::translate_support::httpbin_sidecar_node;

pub const PORT: u16 = 8000;
pub const HOST: &str = "httpbin.foo.svc.cluster.local";
pub const SNI: &str = "outbound_.8000_._.httpbin.foo.svc.cluster.local";
const SERVER_ID: &str = "spiffe://cluster.local/ns/foo/sa/httpbin";
/// The load generator's identity (the caller every ALLOW rule's last entry names).
const CLIENT_ID: &str = "spiffe://cluster.local/ns/bar/sa/sleep";
const ISSUER: &str = "bench@isthmus.test";
const SUBJECT: &str = "alice";
/// The path every measured request asks for; only the last rule allows it.
pub const PATH: &str = "/bench/items";

type Res<T> = Result<T, String>;

/// The trust domain's CA as `isthmus ca init|intermediate` makes it.
pub struct Pki {
    root: CertificateDer<'static>,
    root_pem: String,
    west: Authority,
}

impl Pki {
    pub fn new() -> Res<Self> {
        let root = create_root(&RootOptions::default()).map_err(|e| format!("root CA: {e}"))?;
        let inter = create_intermediate(&root, &IntermediateOptions::new("west"))
            .map_err(|e| format!("intermediate CA: {e}"))?;
        let west = Authority::new(
            &inter,
            &inter.cert_pem,
            &root.cert_pem,
            "cluster.local",
            LeafPolicy::default(),
        )
        .map_err(|e| format!("authority: {e}"))?;
        Ok(Pki {
            root: pem_der(&root.cert_pem)?,
            root_pem: root.cert_pem,
            west,
        })
    }

    /// A leaf for `id`: key made locally, CSR signed by the intermediate.
    fn leaf(&self, id: &str) -> Res<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = rcgen::KeyPair::generate().map_err(|e| format!("leaf key: {e}"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| format!("leaf params: {e}"))?;
        let uri = id.try_into().map_err(|e| format!("SAN {id}: {e}"))?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| format!("CSR: {e}"))?;
        let caller = SpiffeId::parse(id).map_err(|e| format!("SPIFFE ID {id}: {e}"))?;
        let issued = self
            .west
            .sign_csr(&csr, &caller, None)
            .map_err(|e| format!("signing {id}: {e}"))?;
        let n = issued.chain_pem.len().saturating_sub(1); // without the root
        let chain = issued.chain_pem[..n]
            .iter()
            .map(|p| pem_der(p))
            .collect::<Res<Vec<_>>>()?;
        Ok((
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ))
    }

    /// The load generator's TLS: its own SPIFFE leaf, the server checked
    /// against the bundle (as a client sidecar would).
    pub fn client_tls(&self) -> Res<Arc<rustls::ClientConfig>> {
        let verifier = SpiffeVerifier::new(
            std::slice::from_ref(&self.root),
            vec![SanMatcher::Exact(SERVER_ID.into())],
        )
        .map_err(|e| format!("verifier: {e}"))?;
        let (chain, key) = self.leaf(CLIENT_ID)?;
        let mut cfg = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn pem_der(pem: &str) -> Res<CertificateDer<'static>> {
    isthmus_identity::pem::certs_from_pem(pem, "CA certificate")
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| "empty PEM".to_string())
}

/// An RS256 issuer: its JWKS (inline in the RequestAuthentication) and a
/// token for `alice`, valid for the whole run.
pub struct Issuer {
    pub jwks: String,
    pub token: String,
}

impl Issuer {
    pub fn new() -> Res<Self> {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .map_err(|e| format!("RSA key: {e}"))?;
        let der = key.to_pkcs1_der().map_err(|e| format!("PKCS#1: {e}"))?;
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "bench-1", "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be())}]})
        .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("bench-1".into());
        let claims = json!({"iss": ISSUER, "sub": SUBJECT, "aud": "httpbin.foo",
            "iat": now, "exp": now + 24 * 3600});
        let token = encode(&header, &claims, &EncodingKey::from_rsa_der(der.as_bytes()))
            .map_err(|e| format!("signing the JWT: {e}"))?;
        Ok(Issuer { jwks, token })
    }
}

/// A policy set under test and a request it must deny (proof that the
/// policies are really enforced, checked before measuring).
pub struct Scenario {
    pub name: String,
    yaml: String,
    /// (path, send the token) of a request that must get 403.
    pub denied: (&'static str, bool),
}

const BASE: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin
  namespace: foo
spec:
  hosts: ["httpbin.foo.svc.cluster.local"]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 8000
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: httpbin
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: httpbin-1
  namespace: foo
spec:
  address: 127.0.0.1
  labels:
    app: httpbin
  serviceAccount: httpbin
"#;

/// One ALLOW policy with one rule, selecting httpbin.
fn allow(name: &str, from: &str, to: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: foo\nspec:\n  selector:\n    matchLabels:\n      app: httpbin\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n{from}    to:\n    - operation:\n{to}"
    )
}

impl Scenario {
    pub fn baseline() -> Self {
        Scenario {
            name: "no policy".into(),
            yaml: BASE.into(),
            denied: ("", false),
        }
    }

    /// `n` ALLOW policies of one rule each (principal + methods + path),
    /// as `n` teams would write them. Rules are evaluated in name order
    /// and only the last one (`bench-NNN` with the highest number) allows
    /// the load generator, so every request walks all `n`.
    pub fn rules(n: usize) -> Self {
        let mut yaml = BASE.to_string();
        for i in 0..n {
            let last = i + 1 == n;
            let (principal, path) = if last {
                (
                    "cluster.local/ns/bar/sa/sleep".to_string(),
                    "/bench/*".to_string(),
                )
            } else {
                (
                    format!("cluster.local/ns/team-{i}/sa/client-{i}"),
                    format!("/api/v{i}/*"),
                )
            };
            yaml.push_str(&allow(
                &format!("bench-{i:03}"),
                &format!("        principals: [\"{principal}\"]\n"),
                &format!("        methods: [\"GET\", \"HEAD\"]\n        paths: [\"{path}\"]\n"),
            ));
        }
        Scenario {
            name: format!("{n} ALLOW rules"),
            yaml,
            denied: ("/admin", true),
        }
    }

    /// RequestAuthentication (RS256, inline JWKS) and one ALLOW rule on
    /// the request principal: every request's token is verified.
    pub fn jwt(issuer: &Issuer) -> Self {
        let mut yaml = BASE.to_string();
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: bench-jwt\n  namespace: foo\nspec:\n  selector:\n    matchLabels:\n      app: httpbin\n  jwtRules:\n  - issuer: \"{ISSUER}\"\n    audiences: [\"httpbin.foo\"]\n    jwks: '{}'\n",
            issuer.jwks
        ));
        yaml.push_str(&allow(
            "bench-jwt",
            &format!("        requestPrincipals: [\"{ISSUER}/{SUBJECT}\"]\n"),
            "        methods: [\"GET\", \"HEAD\"]\n",
        ));
        Scenario {
            name: "JWT RS256 + requestPrincipals rule".into(),
            yaml,
            // No token: jwt_authn lets it through, RBAC finds no principal.
            denied: (PATH, false),
        }
    }

    /// The inbound listener for port 8000 as the control plane translates
    /// it for the httpbin sidecar, rebound to port 0.
    fn inbound_listener(&self) -> Res<Listener> {
        let mut resources = BTreeMap::new();
        for doc in parse_text(Path::new("bench.yaml"), &self.yaml) {
            if doc.has_errors() {
                return Err(format!("[{}] YAML has errors: {doc:?}", self.name));
            }
            if let Some(r) = doc.resource {
                resources.insert(
                    r.key(),
                    StoredResource {
                        resource: r,
                        location: doc.location,
                    },
                );
            }
        }
        let inputs = Inputs::new(
            Arc::new(ConfigSnapshot::new(1, resources, Vec::new())),
            Arc::new(RegistrySnapshot::default()),
            LocalSettings::default(),
        );
        let proxy = httpbin_proxy()?;
        for r in generate(
            &inputs,
            &proxy,
            ProxyFlavor::Envoy,
            TypeUrl::Listener,
            &Names::All,
        ) {
            let mut l = Listener::decode(r.body.value.as_slice())
                .map_err(|e| format!("translated listener: {e}"))?;
            let Some(address::Address::SocketAddress(sa)) =
                l.address.as_mut().and_then(|a| a.address.as_mut())
            else {
                continue;
            };
            let inbound = sa.port_specifier == Some(PortSpecifier::PortValue(PORT.into()))
                && sa.address == "127.0.0.1"
                && !l.name.starts_with("outbound");
            if inbound {
                sa.port_specifier = Some(PortSpecifier::PortValue(0));
                return Ok(l);
            }
        }
        Err(format!(
            "[{}] no inbound listener for port {PORT}",
            self.name
        ))
    }
}

fn httpbin_proxy() -> Res<Proxy> {
    Proxy::from_node(Some(&httpbin_sidecar_node())).map_err(|e| format!("proxy node: {e}"))
}

/// A running httpbin sidecar for one scenario.
pub struct Sidecar {
    pub gw: Gateway,
    pub inbound: SocketAddr,
    _cert: tokio::sync::watch::Sender<Arc<WorkloadCertificate>>,
    _ads: ScriptedAds,
}

impl Sidecar {
    pub async fn start(pki: &Pki, scenario: &Scenario, app: SocketAddr) -> Res<Self> {
        let listener = scenario.inbound_listener()?;
        let cluster = format!("inbound|{PORT}||");
        let ads = ScriptedAds::start().await;
        ads.set(SDS, vec![named("ROOTCA", rootca(&pki.root_pem))]);
        ads.set(CDS, vec![named(&cluster, eds_cluster(&cluster))]);
        ads.set(EDS, vec![named(&cluster, cla(&cluster, &[(0, &[app])]))]);
        let name = listener.name.clone();
        ads.set(LDS, vec![named(&name, listener)]);
        let (chain, key) = pki.leaf(SERVER_ID)?;
        let wc = WorkloadCertificate::new(chain, key, vec![pki.root.clone()])
            .map_err(|e| format!("workload certificate: {e}"))?;
        let (cert_tx, rx) = tokio::sync::watch::channel(Arc::new(wc));
        let gw = gateway(&ads, "sidecar", Some(rx)).await;
        if !gw.wait_ready(WAIT).await {
            return Err(format!("[{}] sidecar not ready", scenario.name));
        }
        let inbound = gw
            .wait_listener(&name, WAIT)
            .await
            .ok_or_else(|| format!("[{}] listener {name} not bound (NACK?)", scenario.name))?;
        Ok(Sidecar {
            gw,
            inbound,
            _cert: cert_tx,
            _ads: ads,
        })
    }
}
