//! Small builders of registry data for tests (unit tests here, integration
//! tests and the lead's harness through the `testing` feature).

use crate::command::PublishDiff;
use crate::model::{
    ClusterInfo, ClusterService, Endpoint, ExportedService, Health, Locality, ServiceKey,
    ServicePort,
};
use std::collections::BTreeMap;

pub fn cluster(id: &str) -> ClusterInfo {
    ClusterInfo {
        id: id.to_string(),
        network: format!("net-{id}"),
        locality: Locality {
            region: "eu".into(),
            zone: format!("eu-{id}"),
            subzone: String::new(),
        },
        eastwest_tcp: vec![format!("{id}.example:15443")],
        eastwest_quic: vec![format!("{id}.example:15443")],
        ingress: vec![],
        intermediate_pem: String::new(),
        roots_pem: vec![],
    }
}

pub fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

/// A service of `cluster` with `n` healthy endpoints named after `tag`.
pub fn service(cluster: &str, name: &str, n: usize, tag: u64) -> ClusterService {
    ClusterService {
        cluster: cluster.to_string(),
        service: ExportedService {
            key: key("default", name),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                protocol: "HTTP".into(),
                target_port: 9080,
            }],
            labels: BTreeMap::new(),
        },
        endpoints: (0..n)
            .map(|i| Endpoint {
                address: format!("10.{}.{}.{}", tag % 250, i / 250, i % 250),
                ports: BTreeMap::from([("http".to_string(), 9080)]),
                labels: BTreeMap::from([("version".to_string(), format!("v{tag}"))]),
                service_account: name.to_string(),
                locality: Locality::default(),
                weight: 1,
                health: Health::Healthy,
            })
            .collect(),
    }
}

pub fn upsert(svc: ClusterService) -> PublishDiff {
    PublishDiff {
        upserts: vec![svc],
        removals: vec![],
    }
}
