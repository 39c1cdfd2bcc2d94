//! Envoy's success-rate outlier detection with real HTTP backends: five
//! healthy backends and one that fails most requests with 500 (never five
//! in a row, so the consecutive-5xx detector alone would not catch it). The
//! flaky one is ejected once an interval has enough volume; the healthy
//! ones are not, and traffic then avoids it.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::ads::ScriptedAds;
use support::http::*;
use support::resources::*;
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// An HTTP backend whose `fail_per_ten` of every ten requests get a 500
/// (spread so that no five failures are consecutive when it is below 10).
struct Flaky {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl Flaky {
    async fn start(fail_per_ten: u64) -> Self {
        let sock = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let h = hits.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = sock.accept().await {
                let h = h.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        // Failures at positions 0,2,4,... of each ten: at most
                        // one success apart, never five in a row.
                        let k = n % 10;
                        let fail = k % 2 == 0 && k / 2 < fail_per_ten;
                        let status = if fail { 500 } else { 200 };
                        async move {
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            hits,
            _tasks: tasks,
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_the_flaky_backend_only() {
    let mut good = Vec::new();
    for _ in 0..5 {
        good.push(Flaky::start(0).await);
    }
    // Five of every ten fail (alternating): 50 % success.
    let flaky = Flaky::start(5).await;
    let ads = ScriptedAds::start().await;
    let mut svc = eds_cluster("svc");
    svc.outlier_detection = Some(OutlierDetection {
        // The consecutive detectors are off: only success rate may eject.
        consecutive_5xx: u32v(1000),
        consecutive_gateway_failure: u32v(1000),
        interval: Some(PbDuration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        base_ejection_time: Some(PbDuration {
            seconds: 60,
            nanos: 0,
        }),
        max_ejection_percent: u32v(50),
        success_rate_minimum_hosts: u32v(5),
        success_rate_request_volume: u32v(10),
        success_rate_stdev_factor: u32v(1900),
        enforcing_success_rate: u32v(100),
        ..Default::default()
    });
    ads.set(CDS, vec![named("svc", svc)]);
    let mut addrs: Vec<SocketAddr> = good.iter().map(|b| b.addr).collect();
    addrs.push(flaky.addr);
    ads.set(EDS, vec![named("svc", cla("svc", &[(0, &addrs)]))]);
    ads.set(
        RDS,
        vec![any_host_routes(
            "80",
            vec![prefix_route("all", "/", to_cluster("svc"))],
        )],
    );
    ads.set(
        LDS,
        vec![named("http", http_listener("http", any_port(), rds("80")))],
    );
    let gw = gateway(&ads, "sidecar", None).await;
    assert!(
        gw.wait_ready(Duration::from_secs(20)).await,
        "gateway ready"
    );
    let at = gw.listener_address("http").expect("bound");
    let c = client();

    // Drive traffic until the detector ejects (round robin: each host gets a
    // sixth of the requests, so ≥ 10 per host per interval takes ≥ 60).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for _ in 0..30 {
            get(&c, at, "svc", "/", &[]).await;
        }
        let (_, m) = admin_get(gw.admin_address(), "/metrics").await;
        let ejected = metric(
            &m,
            "isthmus_gateway_outlier_detection_ejections_total{cluster=\"svc\"}",
        )
        .unwrap_or(0.0);
        if ejected >= 1.0 {
            assert_eq!(ejected, 1.0, "only the flaky backend is an outlier");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "success-rate detection never ejected the flaky backend"
        );
    }
    // From now on the flaky backend gets nothing and every request succeeds.
    let before = flaky.hits();
    for _ in 0..120 {
        let (status, _, _) = get(&c, at, "svc", "/", &[]).await;
        assert_eq!(status.as_u16(), 200, "a request reached an ejected host");
    }
    assert_eq!(flaky.hits(), before, "the ejected backend got traffic");
    assert!(good.iter().all(|b| b.hits() > 0));
}
