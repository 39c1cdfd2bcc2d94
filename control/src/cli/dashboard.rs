//! `isthmus dashboard`: the federation dashboard served from the operator's
//! machine. It polls each given control plane's `/dashboard/state.json`
//! (reachable through a tunnel if need be), merges them into one federation
//! view, and serves the same page the control planes serve on their admin
//! port. Each control plane measures its own cluster's traffic; merging
//! several gives every cluster's edges and every cluster's own view of its
//! gateways and Raft role.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use isthmus_control::app::admin::dashboard::{
    assets,
    fetch::{base_url, Fetcher},
    merge::{merge, Poll},
    state::DashboardState,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// A control plane's admin address (`host:port` or `http://host:port`,
    /// its --admin-addr). Repeat it for each cluster to see the whole
    /// federation: each control plane reports its own cluster's traffic.
    #[arg(long = "control", value_name = "ADDR", required = true)]
    pub controls: Vec<String>,
    /// Where to serve the page (http://ADDR/dashboard/).
    #[arg(long, default_value = "127.0.0.1:15015")]
    pub listen: SocketAddr,
    /// How often each control plane is polled.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    isthmus_control::config::Duration::parse(s).map(|d| d.as_std())
}

/// The control plane answers within its own 2 s federation deadline; a
/// little more for the network.
const POLL_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let bases = args
        .controls
        .iter()
        .map(|c| base_url(c))
        .collect::<Result<Vec<_>, _>>()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot bind --listen {}; is the port in use?", args.listen))?;
    let local = listener.local_addr()?;
    // The first line of stdout is the URL (scripts and tests read it).
    println!("isthmus dashboard: http://{local}{}", assets::PREFIX);
    tracing::info!(controls = ?bases, "polling control planes every {:?}", args.interval);

    let first = serde_json::to_vec(&DashboardState {
        problems: vec!["waiting for the control planes' first answers".into()],
        ..DashboardState::default()
    })?;
    let (tx, rx) = watch::channel(Bytes::from(first));
    tokio::spawn(poll_loop(
        bases,
        args.interval.max(Duration::from_millis(100)),
        tx,
    ));
    tokio::select! {
        _ = serve(listener, rx) => {}
        _ = super::shutdown_signal() => {}
    }
    Ok(())
}

/// Polls every control plane each `interval` and publishes the merged view.
async fn poll_loop(bases: Vec<String>, interval: Duration, out: watch::Sender<Bytes>) {
    let fetcher = Fetcher::default();
    let mut polls: Vec<Poll> = bases
        .iter()
        .map(|b| Poll {
            address: b.clone(),
            cluster: None,
            result: Err("not polled yet".into()),
        })
        .collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answers = futures::future::join_all(bases.iter().map(|b| {
            let fetcher = fetcher.clone();
            async move {
                let url = format!("{b}{}state.json", assets::PREFIX);
                let body = fetcher.get(&url, POLL_TIMEOUT).await.map_err(|e| e.to_string())?;
                serde_json::from_slice::<DashboardState>(&body).map_err(|e| {
                    format!("{url} is not a dashboard document ({e}); is the control plane the same version as this CLI?")
                })
            }
        }))
        .await;
        for (poll, answer) in polls.iter_mut().zip(answers) {
            if let Ok(state) = &answer {
                if let Some(c) = state.sources.first().filter(|s| !s.cluster.is_empty()) {
                    poll.cluster = Some(c.cluster.clone());
                }
            } else if let Err(e) = &answer {
                tracing::debug!(control = %poll.address, error = %e, "control plane did not answer");
            }
            poll.result = answer;
        }
        let merged = merge(&polls, SystemTime::now());
        match serde_json::to_vec(&merged) {
            Ok(body) => {
                if out.send(Bytes::from(body)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the merged dashboard state"),
        }
    }
}

async fn serve(listener: TcpListener, state: watch::Receiver<Bytes>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = state.borrow().clone();
                async move { Ok::<_, Infallible>(route(&req, body)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp
}

fn route(req: &Request<Incoming>, state: Bytes) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let path = req.uri().path();
    if path == "/" || path == "/dashboard" {
        return assets::redirect();
    }
    match path.strip_prefix(assets::PREFIX) {
        Some("state.json") => assets::json(state),
        Some(rel) => {
            assets::response(rel).unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found\n"))
        }
        None => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}
