//! The traffic policy in force for one cluster: a DestinationRule's
//! top-level policy, overridden field by field by its port-level settings,
//! then by the subset's policy and the subset's port-level settings (Istio's
//! merge order).

use crate::config::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, LoadBalancerSettings,
    OutlierDetection, PortTrafficPolicy, RetryBudget, TrafficPolicy,
};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectivePolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
    /// Set at the destination or subset level only (Istio has no
    /// port-level retry budget).
    pub retry_budget: Option<RetryBudget>,
}

impl EffectivePolicy {
    fn apply(&mut self, policy: &TrafficPolicy, port: u16) {
        if let Some(b) = &policy.retry_budget {
            self.retry_budget = Some(b.clone());
        }
        self.overlay(
            policy.load_balancer.as_ref(),
            policy.connection_pool.as_ref(),
            policy.outlier_detection.as_ref(),
            policy.tls.as_ref(),
        );
        if let Some(pl) = port_level(&policy.port_level_settings, port) {
            self.overlay(
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
                pl.tls.as_ref(),
            );
        }
    }

    fn overlay(
        &mut self,
        lb: Option<&LoadBalancerSettings>,
        pool: Option<&ConnectionPoolSettings>,
        outlier: Option<&OutlierDetection>,
        tls: Option<&ClientTlsSettings>,
    ) {
        if let Some(v) = lb {
            self.load_balancer = Some(v.clone());
        }
        if let Some(v) = pool {
            self.connection_pool = Some(v.clone());
        }
        if let Some(v) = outlier {
            self.outlier_detection = Some(v.clone());
        }
        if let Some(v) = tls {
            self.tls = Some(v.clone());
        }
    }
}

fn port_level(settings: &[PortTrafficPolicy], port: u16) -> Option<&PortTrafficPolicy> {
    settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
}

/// The policy for `port` and `subset` ("" for none) under `rule`.
pub fn effective(rule: Option<&DestinationRuleSpec>, port: u16, subset: &str) -> EffectivePolicy {
    let mut out = EffectivePolicy::default();
    let Some(rule) = rule else {
        return out;
    };
    if let Some(tp) = &rule.traffic_policy {
        out.apply(tp, port);
    }
    if !subset.is_empty() {
        if let Some(tp) = rule
            .subsets
            .iter()
            .find(|s| s.name == subset)
            .and_then(|s| s.traffic_policy.as_ref())
        {
            out.apply(tp, port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimpleLb;

    fn rule(yaml: &str) -> DestinationRuleSpec {
        serde_yaml_ng::from_str(yaml).expect("test rule parses")
    }

    #[test]
    fn subset_and_port_level_override_in_order() {
        let dr = rule(
            "host: r\ntrafficPolicy:\n  loadBalancer: {simple: LEAST_REQUEST}\n  outlierDetection: {consecutive5xxErrors: 5}\n  portLevelSettings:\n  - port: {number: 9080}\n    loadBalancer: {simple: RANDOM}\nsubsets:\n- name: v2\n  labels: {version: v2}\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n",
        );
        let simple = |p: &EffectivePolicy| p.load_balancer.as_ref().and_then(|l| l.simple);
        assert_eq!(
            simple(&effective(Some(&dr), 80, "")),
            Some(SimpleLb::LeastRequest)
        );
        assert_eq!(
            simple(&effective(Some(&dr), 9080, "")),
            Some(SimpleLb::Random)
        );
        assert_eq!(
            simple(&effective(Some(&dr), 9080, "v2")),
            Some(SimpleLb::RoundRobin)
        );
        assert_eq!(
            simple(&effective(Some(&dr), 9080, "v1")),
            Some(SimpleLb::Random)
        );
        assert!(effective(Some(&dr), 9080, "v2").outlier_detection.is_some());
        assert_eq!(effective(None, 1, ""), EffectivePolicy::default());
    }
}
