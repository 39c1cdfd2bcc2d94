//! What the ingress gateway talks to: a scripted control plane serving the
//! translated listeners, routes, clusters and credentials (SDS), and a
//! backend that terminates TLS itself for PASSTHROUGH.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;

use crate::pki::Leaf;
use crate::support::ads::ScriptedAds;
use crate::support::http::RDS;
use crate::support::resources::{cla, eds_cluster, named, CDS, EDS, LDS, SDS};

/// Every cluster the routes and TCP proxies refer to.
fn referenced_clusters(listeners: &[Listener], routes: &[RouteConfiguration]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rc in routes {
        for vh in &rc.virtual_hosts {
            for r in &vh.routes {
                if let Some(route::Action::Route(a)) = &r.action {
                    if let Some(route_action::ClusterSpecifier::Cluster(c)) = &a.cluster_specifier {
                        out.insert(c.clone());
                    }
                }
            }
        }
    }
    for l in listeners {
        for fc in &l.filter_chains {
            for f in &fc.filters {
                if let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    if let Ok(tp) = TcpProxy::decode(any.value.as_slice()) {
                        if let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = tp.cluster_specifier
                        {
                            out.insert(c);
                        }
                    }
                }
            }
        }
    }
    out
}

/// A backend that terminates TLS itself (the PASSTHROUGH target): answers
/// every connection with a line naming itself.
pub(crate) async fn tls_backend(leaf: &Leaf) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .map(|c| c.expect("pem"))
            .collect(),
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key"),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = sock.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(b"passthrough backend\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (at, task)
}

pub(crate) fn sds(secrets: Vec<Secret>) -> Vec<(String, Any)> {
    secrets
        .into_iter()
        .map(|s| (s.name.clone(), envoy_types::util::pack_any(s)))
        .collect()
}

/// A scripted control plane serving the translated ingress config, with
/// the terminated hosts' clusters on `web` and passthrough on `secure`.
pub(crate) async fn serve(
    listeners: &BTreeMap<u32, Listener>,
    routes: &[RouteConfiguration],
    secrets: Vec<Secret>,
    web: SocketAddr,
    secure: SocketAddr,
) -> ScriptedAds {
    let lds: Vec<Listener> = listeners.values().cloned().collect();
    let clusters = referenced_clusters(&lds, routes);
    assert!(
        clusters.len() >= 2,
        "routes and passthrough name clusters: {clusters:?}"
    );
    let ads = ScriptedAds::start().await;
    ads.set(
        CDS,
        clusters.iter().map(|c| named(c, eds_cluster(c))).collect(),
    );
    ads.set(
        EDS,
        clusters
            .iter()
            .map(|name| {
                let to = if name.contains("secure") { secure } else { web };
                named(name, cla(name, &[(0, &[to])]))
            })
            .collect(),
    );
    ads.set(
        RDS,
        routes.iter().map(|r| named(&r.name, r.clone())).collect(),
    );
    ads.set(SDS, sds(secrets));
    ads.set(LDS, lds.iter().map(|l| named(&l.name, l.clone())).collect());
    ads
}
