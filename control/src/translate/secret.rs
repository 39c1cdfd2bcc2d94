//! SDS: `ROOTCA`, the federation trust bundle (every root the local cluster
//! trusts plus every root any member cluster publishes) as a validation
//! context. `default` (the proxy's own key and certificate) is produced by
//! the proxy itself and never sent: private keys never leave the workload.
//!
//! Gateways also get their user credentials (Istio `credentialName`): the
//! Secret `NAME` in the gateway's own namespace as a `tls_certificate`, and
//! `NAME-cacert` as a validation context from the Secret `NAME-cacert` or,
//! failing that, the `ca.crt` of `NAME`. Only gateways are served these, and
//! only from their own namespace, as Istio does.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};

use isthmus_xds::{Names, ProxyRole};

use crate::config::{Kind, Resource, SecretObject};

use super::tls::SECRET_ROOTCA;
use super::{Context, Inputs};

/// Every distinct root PEM, local ones first, in a stable order.
pub fn trust_bundle(inputs: &Inputs) -> String {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let registry_roots = inputs
        .registry
        .clusters
        .values()
        .flat_map(|c| c.roots_pem.iter());
    for pem in inputs.local.roots_pem.iter().chain(registry_roots) {
        let pem = pem.trim();
        if !pem.is_empty() && seen.insert(pem.to_string()) {
            out.push(pem.to_string());
        }
    }
    let mut bundle = out.join("\n");
    if !bundle.is_empty() {
        bundle.push('\n');
    }
    bundle
}

pub fn secrets(inputs: &Inputs, names: &Names) -> Vec<Secret> {
    if !names.contains(SECRET_ROOTCA) {
        return Vec::new();
    }
    let bundle = trust_bundle(inputs);
    if bundle.is_empty() {
        // An empty validation context would make Envoy reject the secret
        // and every listener using it; better to leave it pending.
        tracing::warn!(
            "no trust roots known yet (local roots empty, registry has none); ROOTCA not served"
        );
        return Vec::new();
    }
    vec![Secret {
        name: SECRET_ROOTCA.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(bundle)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }]
}

/// Every secret `names` asks for that this proxy may have: `ROOTCA` and,
/// for gateways, their credentials.
pub fn for_proxy(ctx: &Context<'_>, names: &Names) -> Vec<Secret> {
    let mut out = secrets(ctx.inputs, names);
    if matches!(ctx.role(), ProxyRole::Ingress | ProxyRole::Egress) {
        if let Names::Some(requested) = names {
            for name in requested.iter().map(|n| &**n) {
                if name == SECRET_ROOTCA || name == super::tls::SECRET_DEFAULT {
                    continue;
                }
                match credential(ctx.inputs, &ctx.proxy.namespace, name) {
                    Ok(s) => out.push(s),
                    Err(why) => tracing::warn!(
                        proxy = %ctx.proxy.node_id,
                        secret = %name,
                        namespace = %ctx.proxy.namespace,
                        "credential not served: {why}; TLS servers using it stay down (or keep the last certificate they received)"
                    ),
                }
            }
        }
    }
    out
}

fn stored_secret<'a>(inputs: &'a Inputs, namespace: &str, name: &str) -> Option<&'a SecretObject> {
    match inputs
        .config
        .get_by(Kind::Secret, namespace, name)?
        .resource
        .as_ref()
    {
        Resource::Secret(s) => Some(s),
        _ => None,
    }
}

fn inline(text: String) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text)),
        ..Default::default()
    })
}

/// The SDS resource for one credential name requested by a gateway in
/// `namespace`. The error says what to fix.
pub fn credential(inputs: &Inputs, namespace: &str, name: &str) -> Result<Secret, String> {
    if let Some(base) = name.strip_suffix(CACERT_SUFFIX) {
        let ca = match stored_secret(inputs, namespace, name) {
            Some(s) => s
                .ca_bundle()
                .map_err(|(f, e)| format!("Secret {namespace}/{name}: {f} {e}"))?
                .ok_or_else(|| format!("Secret {namespace}/{name} has no ca.crt (or cacert)"))?,
            None => stored_secret(inputs, namespace, base)
                .ok_or_else(|| {
                    format!("neither Secret {namespace}/{name} nor {namespace}/{base} exists")
                })?
                .ca_bundle()
                .map_err(|(f, e)| format!("Secret {namespace}/{base}: {f} {e}"))?
                .ok_or_else(|| {
                    format!(
                        "MUTUAL needs a client CA: add ca.crt to Secret {namespace}/{base} or create Secret {namespace}/{name}"
                    )
                })?,
        };
        return Ok(Secret {
            name: name.to_string(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(ca),
                    ..Default::default()
                },
            )),
        });
    }
    let stored = stored_secret(inputs, namespace, name)
        .ok_or_else(|| format!("Secret {namespace}/{name} does not exist (credentialName is looked up in the gateway's namespace)"))?;
    let cred = stored
        .tls_credential()
        .map_err(|(f, e)| format!("Secret {namespace}/{name}: {f} {e}"))?;
    Ok(Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cred.cert_chain),
            private_key: inline(cred.private_key),
            ..Default::default()
        })),
    })
}

/// Istio's name for the client CA that goes with credential `NAME`.
pub const CACERT_SUFFIX: &str = "-cacert";

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use base64::Engine;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use isthmus_federation::RegistrySnapshot;
    use isthmus_xds::Proxy;

    use super::*;
    use crate::store::ConfigSnapshot;

    fn inputs(yaml: &str) -> Inputs {
        let config = ConfigSnapshot::from_text(Path::new("mem.yaml"), yaml)
            .unwrap_or_else(|errors| panic!("{errors:?}"));
        Inputs::new(
            Arc::new(config),
            Arc::new(RegistrySnapshot::default()),
            super::super::LocalSettings::default(),
        )
    }

    fn secret_yaml(name: &str, ns: &str, keys: &[(&str, &str)]) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut y = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ndata:\n"
        );
        for (k, v) in keys {
            y.push_str(&format!("  {k}: {}\n", b64(v)));
        }
        y
    }

    fn proxy(id: &str) -> Proxy {
        Proxy::from_node(Some(&Node {
            id: id.into(),
            ..Default::default()
        }))
        .expect("node")
    }

    fn served(inputs: &Inputs, p: &Proxy, names: &[&str]) -> Vec<String> {
        let ctx = Context::new(inputs, p, super::super::ProxyFlavor::Envoy);
        let names = Names::some(names);
        for_proxy(&ctx, &names)
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    /// Every proxy with a certificate follows the mesh bundle for its own
    /// control-plane trust during a root rotation, including a pure
    /// SNI-passthrough east-west gateway whose configuration references no
    /// secret: `ROOTCA` is served to whoever asks, whatever the role.
    #[test]
    fn rootca_is_served_to_every_proxy_role() {
        let root = rcgen::generate_simple_self_signed(vec!["root".into()]).expect("cert");
        let mut inputs = inputs("");
        inputs.local.roots_pem = vec![root.cert.pem()];
        let role = |r: &str| {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert(
                "ISTHMUS_ROLE".to_string(),
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                        r.into(),
                    )),
                },
            );
            Proxy::from_node(Some(&Node {
                id: "router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local".into(),
                metadata: Some(envoy_types::pb::google::protobuf::Struct {
                    fields: fields.into_iter().collect(),
                }),
                ..Default::default()
            }))
            .expect("node")
        };
        let proxies = [
            proxy("sidecar~10.0.0.2~p.shop~shop.svc.cluster.local"),
            role("ingress"),
            role("egress"),
            role("east-west"),
        ];
        for p in &proxies {
            assert_eq!(
                served(&inputs, p, &["ROOTCA"]),
                vec!["ROOTCA"],
                "{:?}",
                p.role
            );
        }
    }

    #[test]
    fn gateway_credentials_come_from_secrets_in_the_gateway_namespace() {
        let c = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).expect("cert");
        let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
        let yaml = [
            secret_yaml(
                "with-ca",
                "istio-system",
                &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &cert)],
            ),
            secret_yaml(
                "plain",
                "istio-system",
                &[("tls.crt", &cert), ("tls.key", &key)],
            ),
            secret_yaml("plain-cacert", "istio-system", &[("cacert", &cert)]),
            secret_yaml(
                "elsewhere",
                "shop",
                &[("tls.crt", &cert), ("tls.key", &key)],
            ),
        ]
        .join("---\n");
        let inputs = inputs(&yaml);
        let gw = proxy("router~10.0.0.1~ingress-1.istio-system~istio-system.svc.cluster.local");
        assert_eq!(
            served(
                &inputs,
                &gw,
                &[
                    "with-ca",
                    "with-ca-cacert",
                    "plain",
                    "plain-cacert",
                    "elsewhere",
                    "missing",
                    "missing-cacert"
                ]
            ),
            vec!["plain", "plain-cacert", "with-ca", "with-ca-cacert"],
            "served from the gateway's own namespace only; missing ones left out"
        );
        // Sidecars never get user credentials.
        let sidecar = proxy("sidecar~10.0.0.2~p.istio-system~istio-system.svc.cluster.local");
        assert!(served(&inputs, &sidecar, &["with-ca"]).is_empty());
        // The errors say what to fix.
        let err = credential(&inputs, "istio-system", "missing").expect_err("missing");
        assert!(err.contains("istio-system/missing does not exist"), "{err}");
        let err = credential(&inputs, "istio-system", "elsewhere-cacert").expect_err("no ca");
        assert!(err.contains("neither"), "{err}");
    }
}
