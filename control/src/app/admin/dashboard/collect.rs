//! The traffic collector: one task that, while someone watches the
//! dashboard, scrapes the admin `/metrics` of every proxy connected to this
//! control plane, turns the Istio counters into per-edge rates, and
//! publishes the result on a `watch`. The page's polls only read the last
//! result, so rates are computed once per round, however many pages poll.
//!
//! Proxies are found through xDS (every connected node id carries the
//! proxy's IP); their admin port is Istio's 15000 unless configured
//! otherwise. Nobody watching for `idle_after` stops the scraping.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use isthmus_xds::ProxyStatus;
use tokio::sync::watch;

use super::fetch::Fetcher;
use super::promtext;
use super::rates::{edge_counts, sum_by_edge, RateTracker, Reporting, HTTP_REQUESTS, TCP_OPENED};
use super::state::{now_ms, EdgeState, TrafficState};

/// The proxies' admin port (architecture.md, Ports).
pub const PROXY_ADMIN_PORT: u16 = 15000;

/// Errors listed on the page per round; the rest are counted.
const MAX_LISTED_ERRORS: usize = 8;

#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// Time between scrape rounds, so the rate window.
    pub interval: Duration,
    pub scrape_timeout: Duration,
    /// Stop scraping when no page asked for this long.
    pub idle_after: Duration,
    pub proxy_admin_port: u16,
    /// Scrapes in flight at once.
    pub concurrency: usize,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            interval: Duration::from_secs(1),
            scrape_timeout: Duration::from_millis(800),
            idle_after: Duration::from_secs(30),
            proxy_admin_port: PROXY_ADMIN_PORT,
            concurrency: 32,
        }
    }
}

/// One proxy to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node_id: String,
    pub url: String,
    pub reporting: Reporting,
}

/// The workload a proxy stands for: `app-version` from its labels (the
/// same for every replica), else `app`, else its pod name.
fn workload_name(p: &isthmus_xds::Proxy) -> String {
    match (p.labels.get("app"), p.labels.get("version")) {
        (Some(app), Some(v)) => format!("{app}-{v}"),
        (Some(app), None) => app.clone(),
        _ => p.name.clone(),
    }
}

/// Every connected proxy once (a proxy may hold several streams).
pub fn targets(statuses: &[ProxyStatus], admin_port: u16) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for s in statuses {
        let p = &s.proxy;
        if out.iter().any(|t| t.node_id == p.node_id) {
            continue;
        }
        let addr = std::net::SocketAddr::new(p.ip, admin_port);
        out.push(Target {
            node_id: p.node_id.clone(),
            url: format!("http://{addr}/metrics"),
            reporting: Reporting {
                workload: workload_name(p),
                cluster: p.cluster_id.clone(),
            },
        });
    }
    out
}

/// What the admin routes hold: the latest traffic, and a way to say a page
/// is watching.
#[derive(Clone)]
pub struct CollectorHandle {
    wanted: Arc<watch::Sender<Option<Instant>>>,
    traffic: watch::Receiver<Arc<TrafficState>>,
}

impl CollectorHandle {
    /// Marks that a page is watching: keeps (or starts) the scraping.
    pub fn touch(&self) {
        self.wanted.send_replace(Some(Instant::now()));
    }

    pub fn traffic(&self) -> Arc<TrafficState> {
        self.traffic.borrow().clone()
    }
}

/// Starts the collector over whatever `list` returns each round (the
/// proxies connected to xDS, in the control plane). It ends when every
/// handle is dropped.
pub fn start(
    list: impl Fn() -> Vec<Target> + Send + 'static,
    config: CollectConfig,
) -> CollectorHandle {
    let (wanted_tx, wanted_rx) = watch::channel(None);
    let (traffic_tx, traffic_rx) = watch::channel(Arc::new(TrafficState::default()));
    tokio::spawn(run(list, config, wanted_rx, traffic_tx));
    CollectorHandle {
        wanted: Arc::new(wanted_tx),
        traffic: traffic_rx,
    }
}

async fn run(
    list: impl Fn() -> Vec<Target>,
    config: CollectConfig,
    mut wanted: watch::Receiver<Option<Instant>>,
    out: watch::Sender<Arc<TrafficState>>,
) {
    let fetcher = Fetcher::default();
    let mut tracker = RateTracker::default();
    loop {
        let last = *wanted.borrow_and_update();
        if last.is_none_or(|t| t.elapsed() > config.idle_after) {
            // Baselines this old would average over the idle time.
            tracker.clear();
            if wanted.changed().await.is_err() {
                return;
            }
            continue;
        }
        if out.is_closed() {
            return;
        }
        let started = tokio::time::Instant::now();
        let targets = list();
        let traffic = round(&fetcher, &mut tracker, &targets, &config).await;
        out.send_replace(Arc::new(traffic));
        tokio::time::sleep_until(started + config.interval).await;
    }
}

/// Scrapes every target once and turns the counters into rates.
pub async fn round(
    fetcher: &Fetcher,
    tracker: &mut RateTracker,
    targets: &[Target],
    config: &CollectConfig,
) -> TrafficState {
    // Owned targets and fetcher per future: the task stays `Send`.
    let timeout = config.scrape_timeout;
    let answers: Vec<(Target, Instant, Result<bytes::Bytes, String>)> =
        stream::iter(targets.to_vec())
            .map(|t| {
                let fetcher = fetcher.clone();
                async move {
                    let body = fetcher
                        .get(&t.url, timeout)
                        .await
                        .map_err(|e| e.to_string());
                    (t, Instant::now(), body)
                }
            })
            .buffer_unordered(config.concurrency.max(1))
            .collect()
            .await;
    tracker.retain(|node| targets.iter().any(|t| t.node_id == node));
    let mut errors = Vec::new();
    let mut scraped = 0;
    let mut window: Option<Duration> = None;
    let mut rates = Vec::new();
    for (t, at, body) in answers {
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                errors.push(format!("{}: {e}", t.node_id));
                continue;
            }
        };
        scraped += 1;
        let text = String::from_utf8_lossy(&body);
        let (samples, bad) = promtext::parse(&text, |n| n == HTTP_REQUESTS || n == TCP_OPENED);
        if let Some(first) = bad.first() {
            errors.push(format!("{}: {first} ({} bad lines)", t.node_id, bad.len()));
        }
        if let Some((w, r)) = tracker.observe(&t.node_id, at, edge_counts(&samples, &t.reporting)) {
            window = Some(window.map_or(w, |x| x.max(w)));
            rates.extend(r);
        }
    }
    errors.sort();
    if errors.len() > MAX_LISTED_ERRORS {
        let more = errors.len() - MAX_LISTED_ERRORS;
        errors.truncate(MAX_LISTED_ERRORS);
        errors.push(format!("... and {more} more scrape errors"));
    }
    TrafficState {
        collected_at_ms: now_ms(SystemTime::now()),
        window_secs: window.map(|w| w.as_secs_f64()),
        targets: targets.len(),
        scraped,
        edges: sum_by_edge(rates)
            .into_iter()
            .map(|r| EdgeState::new(r.key, r.per_sec, r.errors_per_sec))
            .collect(),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    use super::*;

    /// A proxy admin port on port 0 whose counter grows by 10 per scrape.
    async fn fake_proxy() -> (std::net::SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = c.fetch_add(10, Ordering::SeqCst) + 10;
                        let body = format!(
                            "# TYPE istio_requests_total counter\n\
                             istio_requests_total{{reporter=\"source\",destination_service=\"reviews.default.svc.cluster.local:9080\",response_code=\"200\"}} {n}\n\
                             istio_requests_total{{reporter=\"source\",destination_service=\"reviews.default.svc.cluster.local:9080\",response_code=\"503\"}} 1\n"
                        );
                        async move {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn rounds_scrape_proxies_and_report_rates_and_dead_ones() {
        let (addr, _) = fake_proxy().await;
        // A port nobody listens on: bound, then closed.
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let target = |id: &str, a: std::net::SocketAddr| Target {
            node_id: id.into(),
            url: format!("http://{a}/metrics"),
            reporting: Reporting {
                workload: "productpage-v1".into(),
                cluster: Some("us-west".into()),
            },
        };
        let targets = vec![target("live", addr), target("dead", dead)];
        let fetcher = Fetcher::default();
        let mut tracker = RateTracker::default();
        let config = CollectConfig::default();
        let first = round(&fetcher, &mut tracker, &targets, &config).await;
        assert_eq!((first.targets, first.scraped), (2, 1));
        assert_eq!(first.window_secs, None, "one scrape gives no rate");
        assert!(first.edges.is_empty());
        assert_eq!(first.errors.len(), 1);
        assert!(
            first.errors[0].starts_with("dead: cannot reach"),
            "{:?}",
            first.errors
        );

        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = round(&fetcher, &mut tracker, &targets, &config).await;
        let window = second.window_secs.expect("two scrapes give a rate");
        assert_eq!(second.edges.len(), 1, "{:?}", second.edges);
        let e = &second.edges[0];
        assert_eq!(e.key.source, "productpage-v1");
        assert_eq!(e.key.destination, "reviews.default.svc.cluster.local");
        // 10 more requests, no new errors, over the measured window.
        assert!((e.rps - 10.0 / window).abs() < 1e-6, "{e:?} over {window}");
        assert_eq!(e.success_rate, Some(1.0));
    }

    #[tokio::test]
    async fn the_collector_runs_only_while_watched() {
        let (addr, count) = fake_proxy().await;
        let url = format!("http://{addr}/metrics");
        let config = CollectConfig {
            interval: Duration::from_millis(50),
            idle_after: Duration::from_millis(300),
            ..CollectConfig::default()
        };
        let handle = start(
            move || {
                vec![Target {
                    node_id: "p".into(),
                    url: url.clone(),
                    reporting: Reporting {
                        workload: "w".into(),
                        cluster: None,
                    },
                }]
            },
            config,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            0,
            "nobody watched: no scrapes"
        );
        handle.touch();
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.traffic().window_secs.is_none() {
            assert!(
                Instant::now() < deadline,
                "no rates within 10 s of a page asking"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!handle.traffic().edges.is_empty());
        // Idle again: scraping stops.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = count.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if count.load(Ordering::SeqCst) == before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still scraping long after the last page poll"
            );
        }
    }
}
