//! Request rates per service edge, from the proxies' Istio metrics.
//!
//! Each scrape of a proxy gives cumulative counters per edge; a rate is the
//! difference to the same proxy's previous scrape divided by the time
//! between the two, computed once per collection round (not per page
//! request). Counters that go down mean the proxy restarted: like
//! Prometheus' `rate()`, the new value then counts from zero.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::promtext::Sample;

/// Istio's HTTP request counter.
pub const HTTP_REQUESTS: &str = "istio_requests_total";
/// Istio's TCP connection counter.
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";

/// Which side of the call counted it (Istio's `reporter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reporter {
    Source,
    Destination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Requests (`istio_requests_total`), with success by response code.
    Http,
    /// Connections (`istio_tcp_connections_opened_total`); no success rate.
    Tcp,
}

/// One directed edge of the service graph, as one reporter names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeKey {
    /// The calling workload (`source_workload`, else the reporting proxy's
    /// own workload, else the service account of `source_principal`).
    pub source: String,
    pub source_cluster: Option<String>,
    /// The called service's host, e.g. `reviews.default.svc.cluster.local`.
    pub destination: String,
    pub destination_cluster: Option<String>,
    pub reporter: Reporter,
    pub protocol: Protocol,
}

/// The proxy whose metrics are read: names the side its labels leave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporting {
    pub workload: String,
    pub cluster: Option<String>,
}

/// Cumulative counters of one edge on one proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub total: f64,
    /// 5xx and requests without a response (code 0), as Istio's dashboards
    /// count failures; always 0 for TCP.
    pub errors: f64,
}

/// A label value that says something (`unknown` is Istio's "not known").
fn known(v: &str) -> Option<&str> {
    (!v.is_empty() && v != "unknown").then_some(v)
}

/// `outbound|9080|v1|reviews.default.svc.cluster.local` or
/// `reviews.default.svc.cluster.local:9080` to the bare host.
pub fn service_host(v: &str) -> &str {
    let host = v.rsplit('|').next().unwrap_or(v);
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The service account of a SPIFFE ID (`spiffe://td/ns/NS/sa/SA`).
fn principal_account(p: &str) -> Option<&str> {
    p.strip_prefix("spiffe://")?
        .split_once("/sa/")
        .map(|(_, sa)| sa)
        .filter(|sa| !sa.is_empty())
}

fn edge_of(s: &Sample, protocol: Protocol, me: &Reporting) -> EdgeKey {
    let reporter = if s.label("reporter") == "destination" {
        Reporter::Destination
    } else {
        Reporter::Source
    };
    let mine = |side: Reporter| reporter == side;
    let source = known(s.label("source_workload"))
        .map(str::to_string)
        .or_else(|| mine(Reporter::Source).then(|| me.workload.clone()))
        .or_else(|| principal_account(s.label("source_principal")).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string());
    let source_cluster = known(s.label("source_cluster"))
        .map(str::to_string)
        .or_else(|| mine(Reporter::Source).then(|| me.cluster.clone()).flatten());
    let destination = known(s.label("destination_service"))
        .or_else(|| known(s.label("destination_service_name")))
        .map(service_host)
        .or_else(|| {
            known(s.label("destination_cluster"))
                .filter(|c| c.contains('|'))
                .map(service_host)
        })
        .filter(|h| !h.is_empty())
        .unwrap_or("unknown")
        .to_string();
    // Istio's destination_cluster is a cluster id; an Envoy cluster name
    // (`outbound|...`) in that label says nothing about where it ran.
    let destination_cluster = known(s.label("destination_cluster"))
        .filter(|c| !c.contains('|'))
        .map(str::to_string)
        .or_else(|| {
            mine(Reporter::Destination)
                .then(|| me.cluster.clone())
                .flatten()
        });
    EdgeKey {
        source,
        source_cluster,
        destination,
        destination_cluster,
        reporter,
        protocol,
    }
}

fn is_error(code: &str) -> bool {
    match code.parse::<u16>() {
        Ok(c) => c == 0 || c >= 500,
        Err(_) => true,
    }
}

/// Sums one proxy's Istio counters per edge.
pub fn edge_counts(samples: &[Sample], me: &Reporting) -> BTreeMap<EdgeKey, Counts> {
    let mut out: BTreeMap<EdgeKey, Counts> = BTreeMap::new();
    for s in samples {
        let protocol = match s.name.as_str() {
            HTTP_REQUESTS => Protocol::Http,
            TCP_OPENED => Protocol::Tcp,
            _ => continue,
        };
        if !s.value.is_finite() || s.value < 0.0 {
            continue;
        }
        let c = out.entry(edge_of(s, protocol, me)).or_default();
        c.total += s.value;
        if protocol == Protocol::Http && is_error(s.label("response_code")) {
            c.errors += s.value;
        }
    }
    out
}

/// Per second, over one proxy's last scrape interval.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeRate {
    pub key: EdgeKey,
    pub per_sec: f64,
    pub errors_per_sec: f64,
}

struct Baseline {
    at: Instant,
    counts: BTreeMap<EdgeKey, Counts>,
}

/// The previous scrape of every proxy, to difference against.
#[derive(Default)]
pub struct RateTracker {
    baselines: HashMap<String, Baseline>,
}

fn increase(now: f64, before: Option<f64>) -> f64 {
    match before {
        Some(b) if now >= b => now - b,
        // Reset (restarted proxy) or a series born since the last scrape:
        // everything counted so far happened within the interval.
        _ => now,
    }
}

impl RateTracker {
    /// Records the counters of `proxy` scraped at `at` and returns its
    /// rates since its previous scrape; `None` the first time (no baseline).
    pub fn observe(
        &mut self,
        proxy: &str,
        at: Instant,
        counts: BTreeMap<EdgeKey, Counts>,
    ) -> Option<(Duration, Vec<EdgeRate>)> {
        let previous = self
            .baselines
            .insert(proxy.to_string(), Baseline { at, counts });
        let previous = previous?;
        let current = &self.baselines.get(proxy)?.counts;
        let window = at.checked_duration_since(previous.at)?;
        let secs = window.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let rates = current
            .iter()
            .map(|(key, c)| {
                let before = previous.counts.get(key);
                EdgeRate {
                    key: key.clone(),
                    per_sec: increase(c.total, before.map(|b| b.total)) / secs,
                    errors_per_sec: increase(c.errors, before.map(|b| b.errors)) / secs,
                }
            })
            .collect();
        Some((window, rates))
    }

    /// Forgets proxies that are gone, so a returning one starts afresh.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.baselines.retain(|k, _| live(k));
    }

    pub fn clear(&mut self) {
        self.baselines.clear();
    }
}

/// Adds up the rates of the same edge reported by several proxies (the
/// replicas of one workload, each with its own sidecar).
pub fn sum_by_edge(rates: impl IntoIterator<Item = EdgeRate>) -> Vec<EdgeRate> {
    let mut out: BTreeMap<EdgeKey, (f64, f64)> = BTreeMap::new();
    for r in rates {
        let e = out.entry(r.key).or_default();
        e.0 += r.per_sec;
        e.1 += r.errors_per_sec;
    }
    out.into_iter()
        .map(|(key, (per_sec, errors_per_sec))| EdgeRate {
            key,
            per_sec,
            errors_per_sec,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::promtext;
    use super::*;

    fn me() -> Reporting {
        Reporting {
            workload: "productpage-v1".into(),
            cluster: Some("us-west".into()),
        }
    }

    fn counts(text: &str) -> BTreeMap<EdgeKey, Counts> {
        let (samples, errors) = promtext::parse(text, |n| n == HTTP_REQUESTS || n == TCP_OPENED);
        assert!(errors.is_empty(), "{errors:?}");
        edge_counts(&samples, &me())
    }

    fn outbound(code: u16, n: u64) -> String {
        format!(
            "istio_requests_total{{reporter=\"source\",source_principal=\"spiffe://td/ns/default/sa/bookinfo-productpage\",destination_service=\"reviews.default.svc.cluster.local:9080\",destination_cluster=\"outbound|9080|v1|reviews.default.svc.cluster.local\",response_code=\"{code}\",response_flags=\"-\"}} {n}\n"
        )
    }

    fn reviews() -> EdgeKey {
        EdgeKey {
            source: "productpage-v1".into(),
            source_cluster: Some("us-west".into()),
            destination: "reviews.default.svc.cluster.local".into(),
            destination_cluster: None,
            reporter: Reporter::Source,
            protocol: Protocol::Http,
        }
    }

    #[test]
    fn labels_name_both_sides_and_codes_split_success_from_errors() {
        let c =
            counts(&(outbound(200, 90) + &outbound(404, 5) + &outbound(503, 4) + &outbound(0, 1)));
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            c[&reviews()],
            Counts {
                total: 100.0,
                errors: 5.0
            }
        );

        // Istio's full label set wins over what the proxy knows of itself;
        // the destination side names the called cluster.
        let c = counts(
            "istio_requests_total{reporter=\"destination\",source_workload=\"productpage-v1\",source_cluster=\"us-west\",destination_service=\"outbound|9080||reviews.default.svc.cluster.local\",destination_cluster=\"unknown\",response_code=\"200\"} 3\n\
             istio_tcp_connections_opened_total{reporter=\"source\",destination_service_name=\"ratings.default.svc.cluster.local\",destination_cluster=\"eu-central\"} 8\n",
        );
        let dest = EdgeKey {
            reporter: Reporter::Destination,
            destination_cluster: Some("us-west".into()),
            ..reviews()
        };
        assert_eq!(c[&dest].total, 3.0);
        let tcp = EdgeKey {
            destination: "ratings.default.svc.cluster.local".into(),
            destination_cluster: Some("eu-central".into()),
            protocol: Protocol::Tcp,
            ..reviews()
        };
        assert_eq!(
            c[&tcp],
            Counts {
                total: 8.0,
                errors: 0.0
            }
        );
    }

    #[test]
    fn destination_reported_calls_without_workload_use_the_principal() {
        let c = counts("istio_requests_total{reporter=\"destination\",source_principal=\"spiffe://td/ns/default/sa/bookinfo-productpage\",destination_service=\"unknown\",response_code=\"200\"} 2\n");
        let (k, _) = c.iter().next().expect("one edge");
        assert_eq!(k.source, "bookinfo-productpage");
        assert_eq!(k.source_cluster, None);
        assert_eq!(k.destination, "unknown");
    }

    #[test]
    fn rates_are_deltas_over_each_proxys_own_interval() {
        let t0 = Instant::now();
        let mut tr = RateTracker::default();
        assert!(tr.observe("p1", t0, counts(&outbound(200, 100))).is_none());
        let (window, rates) = tr
            .observe(
                "p1",
                t0 + Duration::from_secs(2),
                counts(&(outbound(200, 140) + &outbound(503, 10))),
            )
            .expect("second scrape has a baseline");
        assert_eq!(window, Duration::from_secs(2));
        assert_eq!(rates.len(), 1);
        // 40 more 200s and 10 new 503s in 2 s.
        assert!((rates[0].per_sec - 25.0).abs() < 1e-9, "{rates:?}");
        assert!((rates[0].errors_per_sec - 5.0).abs() < 1e-9, "{rates:?}");

        // A missed scrape only widens the next window.
        let (window, rates) = tr
            .observe(
                "p1",
                t0 + Duration::from_secs(6),
                counts(&(outbound(200, 180) + &outbound(503, 10))),
            )
            .expect("baseline");
        assert_eq!(window, Duration::from_secs(4));
        assert!((rates[0].per_sec - 10.0).abs() < 1e-9, "{rates:?}");
        assert_eq!(rates[0].errors_per_sec, 0.0);
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero_and_replicas_add_up() {
        let t0 = Instant::now();
        let mut tr = RateTracker::default();
        let s = Duration::from_secs(1);
        tr.observe("a", t0, counts(&outbound(200, 1000)));
        tr.observe("b", t0, counts(&outbound(200, 10)));
        let (_, ra) = tr
            .observe("a", t0 + s, counts(&outbound(200, 7)))
            .expect("a");
        let (_, rb) = tr
            .observe("b", t0 + s, counts(&outbound(200, 13)))
            .expect("b");
        assert_eq!(ra[0].per_sec, 7.0, "reset: the 7 since the restart");
        let total = sum_by_edge(ra.into_iter().chain(rb));
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].per_sec, 10.0);

        tr.retain(|p| p == "b");
        assert!(
            tr.observe("a", t0 + 2 * s, counts(&outbound(200, 9)))
                .is_none(),
            "a forgotten proxy has no baseline"
        );
    }

    #[test]
    fn hosts_come_out_of_cluster_names_and_authorities() {
        assert_eq!(
            service_host("outbound|9080|v1|r.default.svc.cluster.local"),
            "r.default.svc.cluster.local"
        );
        assert_eq!(
            service_host("r.default.svc.cluster.local:9080"),
            "r.default.svc.cluster.local"
        );
        assert_eq!(service_host("r.default"), "r.default");
        assert_eq!(service_host("[::1]:x"), "[::1]:x");
    }
}
