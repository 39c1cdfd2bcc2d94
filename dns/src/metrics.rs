//! Prometheus metrics of the DNS server, registered on the caller's
//! registry (the control plane's `/metrics`). Label values come from the
//! configuration, never from the query, so a flood of random names cannot
//! grow the series count.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::decide::Outcome;

/// Hostname label of queries for names that are not global hostnames.
pub const OTHER: &str = "-";

#[derive(Clone)]
pub struct DnsMetrics {
    queries: IntCounterVec,
    answers: IntCounterVec,
    responses: IntCounterVec,
    truncated: IntCounter,
    dropped: IntCounterVec,
    stale_answers: IntCounter,
    stale: IntGauge,
}

impl DnsMetrics {
    pub fn new(registry: &Registry) -> Result<DnsMetrics, prometheus::Error> {
        let queries = IntCounterVec::new(
            Opts::new(
                "isthmus_dns_queries_total",
                "DNS queries answered, by global hostname (- for other names), policy and result",
            ),
            &["hostname", "policy", "result"],
        )?;
        let answers = IntCounterVec::new(
            Opts::new(
                "isthmus_dns_answers_total",
                "Answers per global hostname and cluster whose ingress addresses they carried",
            ),
            &["hostname", "policy", "cluster"],
        )?;
        let responses = IntCounterVec::new(
            Opts::new(
                "isthmus_dns_responses_total",
                "DNS responses sent, by response code and transport",
            ),
            &["rcode", "protocol"],
        )?;
        let truncated = IntCounter::new(
            "isthmus_dns_truncated_total",
            "UDP responses cut to the client's buffer size with the TC bit set",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "isthmus_dns_dropped_total",
                "Packets not answered: too short to carry a header, responses, or TCP connections over the limit",
            ),
            &["reason"],
        )?;
        let stale_answers = IntCounter::new(
            "isthmus_dns_stale_answers_total",
            "Answers given from a registry view this control plane could not confirm with the registry majority",
        )?;
        let stale = IntGauge::new(
            "isthmus_dns_view_stale",
            "1 while DNS answers come from the last registry view because the registry majority is unreachable",
        )?;
        registry.register(Box::new(queries.clone()))?;
        registry.register(Box::new(answers.clone()))?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(truncated.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(stale_answers.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        Ok(DnsMetrics {
            queries,
            answers,
            responses,
            truncated,
            dropped,
            stale_answers,
            stale,
        })
    }

    pub(crate) fn query(&self, outcome: &Outcome, result: &str, stale: bool) {
        let host = outcome.hostname.as_deref().unwrap_or(OTHER);
        let policy = outcome.policy.unwrap_or("");
        self.queries
            .with_label_values(&[host, policy, result])
            .inc();
        for c in &outcome.clusters {
            self.answers.with_label_values(&[host, policy, c]).inc();
        }
        if stale && outcome.hostname.is_some() {
            self.stale_answers.inc();
        }
    }

    pub(crate) fn response(&self, rcode: &str, protocol: &'static str, truncated: bool) {
        self.responses.with_label_values(&[rcode, protocol]).inc();
        if truncated {
            self.truncated.inc();
        }
    }

    pub(crate) fn dropped(&self, reason: &'static str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    /// Set by whoever builds the view.
    pub fn set_stale(&self, stale: bool) {
        self.stale.set(i64::from(stale));
    }
}
