//! The workload under test: RBAC translation of the policies' YAML, the
//! inbound listeners (HTTP over mTLS, HTTP plaintext, TCP over mTLS)
//! served over a scripted ADS, and the gateway's lifecycle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::util::pack_any;
use isthmus_control::translate::rbac;
use isthmus_gateway::tls::WorkloadCertificate;

use crate::pki::Pki;
use crate::support::ads::ScriptedAds;
use crate::support::resources::{
    addr, cla, eds_cluster, inbound_listener_with, named, rootca, CDS, EDS, LDS, SDS,
};
use crate::support::{gateway, WAIT};
use crate::translate_support;

pub const ROOT_NS: &str = "istio-system";
const HTTP_CLUSTER: &str = "inbound|9080||";
const TCP_CLUSTER: &str = "inbound|9000||";

/// Istio YAML → the RBAC filters for the workload `default/echo`
/// (labels app=echo), exactly as the sidecar translation selects them.
fn translate(yaml: &str) -> (Vec<HttpFilter>, Vec<Filter>) {
    let config = translate_support::config("policies.yaml", yaml);
    let labels: BTreeMap<String, String> = [("app".to_string(), "echo".to_string())].into();
    let applicable = rbac::applicable(&config, ROOT_NS, "default", &labels);
    (
        rbac::http_filters(&applicable),
        rbac::network_filters(&applicable),
    )
}

fn hcm_with(http_rbac: Vec<HttpFilter>) -> Filter {
    let mut filters = http_rbac;
    filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let routes = RouteConfiguration {
        name: HTTP_CLUSTER.into(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound|http|9080".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        HTTP_CLUSTER.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(
            HttpConnectionManager {
                codec_type: CodecType::Auto as i32,
                stat_prefix: "inbound".into(),
                route_specifier: Some(RouteSpecifier::RouteConfig(routes)),
                http_filters: filters,
                ..Default::default()
            },
        ))),
    }
}

fn tcp_with(mut rbac: Vec<Filter>) -> Vec<Filter> {
    rbac.push(Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: "inbound".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(TCP_CLUSTER.into())),
            ..Default::default()
        }))),
    });
    rbac
}

/// Reserves loopback ports so policies can name the listeners' real ports.
async fn reserve_ports() -> (u16, u16, u16) {
    let a = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let b = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let c = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ports = (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
        c.local_addr().expect("addr").port(),
    );
    drop((a, b, c));
    ports
}

/// A sidecar inbound: HTTP over STRICT mTLS, HTTP plaintext, TCP over
/// STRICT mTLS, all enforcing the same policies.
pub struct Workload {
    pub gw: Option<isthmus_gateway::Gateway>,
    _cert: tokio::sync::watch::Sender<Arc<WorkloadCertificate>>,
    _ads: ScriptedAds,
    pub http_tls: SocketAddr,
    pub http_plain: SocketAddr,
    pub tcp_tls: SocketAddr,
}

impl Workload {
    pub async fn start(
        pki: &Pki,
        yaml_template: &str,
        http_backend: SocketAddr,
        tcp_backend: SocketAddr,
    ) -> Self {
        let (p_tls, p_plain, p_tcp) = reserve_ports().await;
        let yaml = yaml_template
            .replace("{HTTP_PORT}", &p_tls.to_string())
            .replace("{PLAIN_PORT}", &p_plain.to_string())
            .replace("{TCP_PORT}", &p_tcp.to_string());
        let (http_rbac, net_rbac) = translate(&yaml);
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let ads = ScriptedAds::start().await;
        ads.set(SDS, vec![named("ROOTCA", rootca(&pki.root_pem))]);
        ads.set(
            CDS,
            vec![
                named(HTTP_CLUSTER, eds_cluster(HTTP_CLUSTER)),
                named(TCP_CLUSTER, eds_cluster(TCP_CLUSTER)),
            ],
        );
        ads.set(
            EDS,
            vec![
                named(HTTP_CLUSTER, cla(HTTP_CLUSTER, &[(0, &[http_backend])])),
                named(TCP_CLUSTER, cla(TCP_CLUSTER, &[(0, &[tcp_backend])])),
            ],
        );
        let hcm = hcm_with(http_rbac);
        let tcp_listener = {
            let mut l = inbound_listener_with("tcp", at(p_tcp), hcm.clone(), &[]);
            l.filter_chains[0].filters = tcp_with(net_rbac);
            l
        };
        let plain = Listener {
            name: "plain".into(),
            address: Some(addr(at(p_plain))),
            filter_chains: vec![FilterChain {
                name: "plaintext".into(),
                filters: vec![hcm.clone()],
                ..Default::default()
            }],
            ..Default::default()
        };
        ads.set(
            LDS,
            vec![
                named("https", inbound_listener_with("https", at(p_tls), hcm, &[])),
                named("plain", plain),
                named("tcp", tcp_listener),
            ],
        );
        let (chain, key) = pki.leaf("spiffe://cluster.local/ns/default/sa/echo");
        let wc = WorkloadCertificate::new(chain, key, vec![pki.root_der()]).expect("cert");
        let (cert_tx, rx) = tokio::sync::watch::channel(Arc::new(wc));
        let gw = gateway(&ads, "sidecar", Some(rx)).await;
        assert!(gw.wait_ready(WAIT).await, "gateway ready");
        let mut bound = Vec::new();
        for name in ["https", "plain", "tcp"] {
            bound.push(
                gw.wait_listener(name, WAIT).await.unwrap_or_else(|| {
                    panic!("listener {name} bound (NACKed?): {:?}", nacks(&ads))
                }),
            );
        }
        Workload {
            gw: Some(gw),
            _cert: cert_tx,
            _ads: ads,
            http_tls: bound[0],
            http_plain: bound[1],
            tcp_tls: bound[2],
        }
    }

    pub async fn stop(mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }
}

fn nacks(ads: &ScriptedAds) -> Vec<String> {
    ads.requests()
        .into_iter()
        .filter_map(|r| r.error_detail.map(|e| e.message))
        .collect()
}
