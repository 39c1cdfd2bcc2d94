use std::collections::BTreeMap;
use std::path::Path;

use isthmus_federation::model::{
    ClusterInfo, ClusterService, Endpoint, ExportedService, Health, ServiceKey, ServicePort,
};
use isthmus_xds::{Names, Proxy};

use super::*;
use crate::source::parse_text;
use crate::store::StoredResource;
use crate::translate::generator::generate;
use crate::translate::ProxyFlavor;

const HOST: &str = "reviews.default.svc.cluster.local";

fn config(extra: &str) -> Arc<ConfigSnapshot> {
    let text = format!(
        r#"apiVersion: isthmus.io/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  clusterId: a
  network: net
  exportAll: true
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings
  namespace: default
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: ratings
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
{extra}"#
    );
    let path = Path::new("test.yaml");
    let mut resources = BTreeMap::new();
    for doc in parse_text(path, &text) {
        assert!(!doc.has_errors(), "{doc:?}");
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
    Arc::new(ConfigSnapshot::new(1, resources, Vec::new()))
}

fn workload(address: &str, weight: u32) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ratings-1
  namespace: default
spec:
  address: {address}
  labels:
    app: ratings
  serviceAccount: ratings
  weight: {weight}
"#
    )
}

fn endpoint(address: &str, sa: &str, health: Health) -> Endpoint {
    Endpoint {
        address: address.into(),
        ports: BTreeMap::from([("grpc".to_string(), 7000)]),
        labels: BTreeMap::from([("version".to_string(), "v1".to_string())]),
        service_account: sa.into(),
        locality: Default::default(),
        weight: 1,
        health,
    }
}

fn registry(endpoints: Vec<Endpoint>, roots: &[&str]) -> Arc<RegistrySnapshot> {
    let mut reg = RegistrySnapshot {
        revision: 7,
        ..Default::default()
    };
    reg.clusters.insert(
        "b".into(),
        ClusterInfo {
            id: "b".into(),
            network: "net".into(),
            locality: Default::default(),
            eastwest_tcp: vec!["192.0.2.1:15443".into()],
            eastwest_quic: vec![],
            ingress: vec![],
            intermediate_pem: String::new(),
            roots_pem: roots.iter().map(|r| r.to_string()).collect(),
        },
    );
    let key = ServiceKey {
        namespace: "default".into(),
        name: "reviews".into(),
    };
    reg.services.entry("b".into()).or_default().insert(
        key.clone(),
        ClusterService {
            cluster: "b".into(),
            service: ExportedService {
                key,
                ports: vec![ServicePort {
                    name: "grpc".into(),
                    port: 9080,
                    protocol: "GRPC".into(),
                    target_port: 7000,
                }],
                labels: Default::default(),
            },
            endpoints,
        },
    );
    Arc::new(reg)
}

fn inputs(config: &Arc<ConfigSnapshot>, registry: &Arc<RegistrySnapshot>) -> Inputs {
    build(config, registry, "ROOT-A")
}

fn base_registry() -> Arc<RegistrySnapshot> {
    registry(
        vec![endpoint("10.2.0.1", "reviews", Health::Healthy)],
        &["ROOT-B"],
    )
}

fn endpoints_of(scopes: &[PushScope]) -> BTreeSet<String> {
    match scopes {
        [PushScope::Endpoints(names)] => names.clone(),
        other => panic!("expected one endpoint-only scope, got {other:?}"),
    }
}

#[test]
fn remote_health_change_is_endpoint_only_for_that_service() {
    let c = config("");
    let old = inputs(&c, &base_registry());
    let new = inputs(
        &c,
        &registry(
            vec![endpoint("10.2.0.1", "reviews", Health::Unhealthy)],
            &["ROOT-B"],
        ),
    );
    let names = endpoints_of(&changes(&old, &new));
    for want in [
        format!("outbound|9080||{HOST}"),
        format!("outbound|9080|v1|{HOST}"),
        format!("outbound_.9080_._.{HOST}"),
        format!("outbound_.9080_.v1_.{HOST}"),
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        names.iter().all(|n| n.ends_with(HOST)),
        "only the changed service: {names:?}"
    );
}

#[test]
fn scaling_a_remote_service_out_is_endpoint_only() {
    let c = config("");
    let old = inputs(&c, &base_registry());
    let new = inputs(
        &c,
        &registry(
            vec![
                endpoint("10.2.0.1", "reviews", Health::Healthy),
                endpoint("10.2.0.2", "reviews", Health::Healthy),
            ],
            &["ROOT-B"],
        ),
    );
    endpoints_of(&changes(&old, &new));
}

#[test]
fn a_new_identity_behind_a_service_is_a_full_push() {
    // Clusters list the SPIFFE identities to expect: CDS changes too.
    let c = config("");
    let old = inputs(&c, &base_registry());
    let new = inputs(
        &c,
        &registry(
            vec![
                endpoint("10.2.0.1", "reviews", Health::Healthy),
                endpoint("10.2.0.2", "reviews-canary", Health::Healthy),
            ],
            &["ROOT-B"],
        ),
    );
    assert_eq!(changes(&old, &new), vec![PushScope::Full]);
}

#[test]
fn local_workload_weight_is_endpoint_only_but_its_address_is_not() {
    let r = base_registry();
    let old = inputs(&config(&workload("10.1.0.1", 1)), &r);
    let heavier = inputs(&config(&workload("10.1.0.1", 5)), &r);
    let names = endpoints_of(&changes(&old, &heavier));
    assert!(names.contains("outbound|9080||ratings.default.svc.cluster.local"));
    assert!(names.contains("outbound_.9080_._.ratings.default.svc.cluster.local"));
    // A sidecar's inbound listeners are found by its IP among the workloads.
    let moved = inputs(&config(&workload("10.1.0.9", 1)), &r);
    assert_eq!(changes(&old, &moved), vec![PushScope::Full]);
}

#[test]
fn routing_config_and_services_appearing_are_full_pushes() {
    let r = base_registry();
    let old = inputs(&config(""), &r);
    let vs = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
"#;
    assert_eq!(
        changes(&old, &inputs(&config(vs), &r)),
        vec![PushScope::Full]
    );
    let mut more = (*base_registry()).clone();
    more.services.clear();
    assert_eq!(
        changes(&old, &inputs(&config(""), &Arc::new(more))),
        vec![PushScope::Full]
    );
}

#[test]
fn a_new_root_pushes_secrets_only() {
    let c = config("");
    let old = inputs(&c, &base_registry());
    let new = inputs(
        &c,
        &registry(
            vec![endpoint("10.2.0.1", "reviews", Health::Healthy)],
            &["ROOT-B", "ROOT-B2"],
        ),
    );
    assert_eq!(
        changes(&old, &new),
        vec![PushScope::Types(BTreeSet::from([TypeUrl::Secret]))]
    );
}

#[test]
fn registry_bookkeeping_pushes_nothing() {
    let c = config("");
    let old = inputs(&c, &base_registry());
    let mut next = (*base_registry()).clone();
    next.revision += 5;
    next.applied_index += 9;
    assert!(changes(&old, &inputs(&c, &Arc::new(next))).is_empty());
}

fn sidecar() -> Proxy {
    use envoy_types::pb::envoy::config::core::v3::Node;
    Proxy::from_node(Some(&Node {
        id: "sidecar~10.1.0.1~ratings-1.default~default.svc.cluster.local".into(),
        ..Default::default()
    }))
    .expect("valid node")
}

/// The claim behind endpoint-only pushes, checked against the translator:
/// everything but EDS is unchanged, and EDS changes only in the names the
/// scope lists.
#[test]
fn endpoint_only_scopes_match_what_translation_changes() {
    let proxy = sidecar();
    let cases = [
        (
            inputs(&config(&workload("10.1.0.1", 1)), &base_registry()),
            inputs(
                &config(&workload("10.1.0.1", 1)),
                &registry(
                    vec![
                        endpoint("10.2.0.1", "reviews", Health::Unhealthy),
                        endpoint("10.2.0.3", "reviews", Health::Healthy),
                    ],
                    &["ROOT-B"],
                ),
            ),
        ),
        (
            inputs(&config(&workload("10.1.0.1", 1)), &base_registry()),
            inputs(&config(&workload("10.1.0.1", 3)), &base_registry()),
        ),
    ];
    for (old, new) in cases {
        let names = endpoints_of(&changes(&old, &new));
        for flavor in [ProxyFlavor::Envoy, ProxyFlavor::Grpc] {
            let gen = |i: &Inputs, t: TypeUrl, n: &Names| generate(i, &proxy, flavor, t, n);
            for t in [TypeUrl::Cluster, TypeUrl::Listener, TypeUrl::Secret] {
                assert_eq!(gen(&old, t, &Names::All), gen(&new, t, &Names::All), "{t}");
            }
            let clusters: BTreeSet<String> = gen(&new, TypeUrl::Cluster, &Names::All)
                .into_iter()
                .map(|r| r.name)
                .collect();
            let eds = Names::some(clusters);
            let before = gen(&old, TypeUrl::ClusterLoadAssignment, &eds);
            let after = gen(&new, TypeUrl::ClusterLoadAssignment, &eds);
            let mut changed = 0;
            for (b, a) in before.iter().zip(&after) {
                assert_eq!(b.name, a.name);
                if b != a {
                    changed += 1;
                    assert!(
                        names.contains(&a.name),
                        "{} changed but is not pushed",
                        a.name
                    );
                }
            }
            assert_eq!(before.len(), after.len());
            if flavor == ProxyFlavor::Envoy {
                assert!(changed > 0, "the case changes some endpoints");
            }
        }
    }
}

fn proxy(ip: &str, grpc: bool) -> Proxy {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::{value::Kind as V, Struct, Value};
    let meta = grpc.then(|| Struct {
        fields: [(
            "GENERATOR".to_string(),
            Value {
                kind: Some(V::StringValue("grpc".into())),
            },
        )]
        .into_iter()
        .collect(),
    });
    Proxy::from_node(Some(&Node {
        id: format!("sidecar~{ip}~p.default~default.svc.cluster.local"),
        metadata: meta,
        ..Default::default()
    }))
    .expect("valid node")
}

/// Backs the coarse shape asked of the translate generator: proxies that
/// differ only in their addresses get equal EDS and SDS (and, for
/// proxyless gRPC, equal everything), even when one of them is a workload
/// behind a service.
#[test]
fn output_that_ignores_the_proxy_address() {
    let i = inputs(&config(&workload("10.1.0.1", 1)), &base_registry());
    let all_clusters = |p: &Proxy, f| {
        Names::some(
            generate(&i, p, f, TypeUrl::Cluster, &Names::All)
                .into_iter()
                .map(|r| r.name),
        )
    };
    for (flavor, grpc) in [(ProxyFlavor::Envoy, false), (ProxyFlavor::Grpc, true)] {
        let (a, b) = (proxy("10.1.0.1", grpc), proxy("10.1.0.2", grpc));
        assert_eq!(a.shape_key_except_address(), b.shape_key_except_address());
        let eds = all_clusters(&a, flavor);
        let mut types = vec![
            (TypeUrl::ClusterLoadAssignment, eds),
            (TypeUrl::Secret, Names::All),
        ];
        if flavor == ProxyFlavor::Grpc {
            let target = Names::some([format!("{HOST}:9080")]);
            types.push((TypeUrl::Cluster, Names::All));
            types.push((TypeUrl::Listener, target.clone()));
            types.push((TypeUrl::RouteConfiguration, target));
        }
        for (t, names) in types {
            let out_a = generate(&i, &a, flavor, t, &names);
            assert!(!out_a.is_empty(), "{t} for {flavor:?} is not empty");
            assert_eq!(out_a, generate(&i, &b, flavor, t, &names), "{t} {flavor:?}");
        }
    }
    // Envoy sidecars' clusters do depend on it: the workload at 10.1.0.1
    // has inbound clusters, the other proxy none.
    let (a, b) = (proxy("10.1.0.1", false), proxy("10.1.0.2", false));
    assert_ne!(
        generate(&i, &a, ProxyFlavor::Envoy, TypeUrl::Cluster, &Names::All),
        generate(&i, &b, ProxyFlavor::Envoy, TypeUrl::Cluster, &Names::All)
    );
}

/// The admin port's JSON config dump understands everything translation
/// renders (it maps the readable text back to structure).
#[test]
fn rendered_output_converts_to_json() {
    use crate::app::admin::debug_json::to_json;
    use crate::translate::render::render_any;
    let i = inputs(&config(&workload("10.1.0.1", 1)), &base_registry());
    let p = proxy("10.1.0.1", false);
    let clusters = generate(&i, &p, ProxyFlavor::Envoy, TypeUrl::Cluster, &Names::All);
    let eds = Names::some(clusters.iter().map(|r| r.name.clone()));
    let mut all = clusters;
    all.extend(generate(
        &i,
        &p,
        ProxyFlavor::Envoy,
        TypeUrl::ClusterLoadAssignment,
        &eds,
    ));
    all.extend(generate(
        &i,
        &p,
        ProxyFlavor::Envoy,
        TypeUrl::Listener,
        &Names::All,
    ));
    all.extend(generate(
        &i,
        &p,
        ProxyFlavor::Envoy,
        TypeUrl::RouteConfiguration,
        &Names::All,
    ));
    all.extend(generate(
        &i,
        &p,
        ProxyFlavor::Envoy,
        TypeUrl::Secret,
        &Names::All,
    ));
    assert!(all.len() > 5);
    for r in &all {
        let text = render_any(&r.body);
        let json = to_json(&text).unwrap_or_else(|| panic!("{} does not convert:\n{text}", r.name));
        assert!(json.is_object(), "{}", r.name);
    }
}
