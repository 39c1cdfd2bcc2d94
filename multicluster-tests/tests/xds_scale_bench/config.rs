//! The benchmark's services: ServiceEntries with WorkloadEntries, exported
//! with ServiceExports, spread over the clusters, one file per service so
//! that one endpoint change rewrites one small file.

use std::fmt::Write as _;

pub const PORT: u16 = 9080;

pub fn host(i: usize) -> String {
    format!("svc{i}.default.svc.cluster.local")
}

pub fn eds_name(i: usize) -> String {
    format!("outbound|{PORT}||{}", host(i))
}

pub fn file_name(i: usize) -> String {
    format!("svc{i}.yaml")
}

/// Which cluster (index) hosts service `i`.
pub fn owner(i: usize, services: usize, clusters: usize) -> usize {
    i * clusters / services
}

/// Endpoint `e` of service `i` (of `per` endpoints each) in cluster `c`,
/// unique across the federation for up to 64,000 endpoints per cluster.
pub fn address(c: usize, i: usize, e: usize, per: usize) -> String {
    let n = i * per + e;
    format!("10.{}.{}.{}", c + 1, n / 250, n % 250 + 1)
}

/// Service `i` with `endpoints` workload entries; `first` replaces the
/// address of endpoint 0 (the benchmark's endpoint change).
pub fn service(c: usize, i: usize, endpoints: usize, first: Option<&str>) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: svc{i}
  namespace: default
spec:
  hosts:
  - {host}
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: {PORT}
    name: http
    protocol: HTTP
  workloadSelector:
    labels:
      app: svc{i}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: svc{i}
  namespace: default
",
        host = host(i)
    );
    for e in 0..endpoints {
        let addr = match (e, first) {
            (0, Some(a)) => a.to_string(),
            _ => address(c, i, e, endpoints),
        };
        let _ = write!(
            s,
            "---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: svc{i}-{e}
  namespace: default
spec:
  address: {addr}
  labels:
    app: svc{i}
    version: v1
"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_spread_evenly_and_addresses_are_unique() {
        let owners: Vec<usize> = (0..1000).map(|i| owner(i, 1000, 3)).collect();
        assert_eq!(owners.iter().filter(|&&o| o == 0).count(), 334);
        assert_eq!(owners[999], 2);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000 {
            for e in 0..10 {
                assert!(seen.insert(address(owner(i, 1000, 3), i, e, 10)));
            }
        }
    }
}
