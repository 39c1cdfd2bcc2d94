//! The shared environment (PKI, clients, echo backends) and checking one
//! policy set: a fresh gateway, every case, and the RBAC denial metrics.

use crate::case::{Case, Expect};
use crate::client::{run, Clients};
use crate::pki::Pki;
use crate::support::http::HttpBackend;
use crate::support::{admin_get, init, Backend};
use crate::workload::Workload;

pub struct Env {
    pki: Pki,
    clients: Clients,
    http_backend: HttpBackend,
    tcp_backend: Backend,
}

impl Env {
    pub async fn new() -> Self {
        init();
        let pki = Pki::new();
        let clients = Clients::new(&pki);
        Env {
            pki,
            clients,
            http_backend: HttpBackend::start("echo").await,
            tcp_backend: Backend::start("tcp").await,
        }
    }

    /// Starts a workload with `yaml`, runs every case, returns failures.
    pub async fn check(&self, set: &str, yaml: &str, cases: &[Case]) -> Vec<String> {
        let w = Workload::start(
            &self.pki,
            yaml,
            self.http_backend.addr,
            self.tcp_backend.addr,
        )
        .await;
        let mut failures = Vec::new();
        for c in cases {
            if let Err(e) = run(&self.clients, &w, c).await {
                failures.push(format!("[{set}] {}: {e}", c.name));
            }
        }
        // Every denial is counted once (HTTP request or TCP connection).
        let gw = w.gw.as_ref().expect("running");
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        let denied: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("isthmus_gateway_rbac_decisions_total{")
                    && l.contains("result=\"denied\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let want = cases.iter().filter(|c| c.expect == Expect::Deny).count() as f64;
        if denied != want {
            failures.push(format!(
                "[{set}] metrics: {denied} denials counted, {want} expected"
            ));
        }
        w.stop().await;
        failures
    }
}
