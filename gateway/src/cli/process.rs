//! Process setup shared by the `isthmus` and `isthmus-gateway` binaries.

/// Logs to stderr; `RUST_LOG` overrides the `--log` filter.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The runtime every long-running command uses: one worker per CPU this
/// process may run on (`TOKIO_WORKER_THREADS` overrides).
///
/// With one worker the scheduler runs on the calling thread instead: a
/// work-stealing pool of one pays for cross-thread queues, atomics and
/// wake-ups that can never help it, and a proxy pinned to one core (or a
/// sidecar limited to one CPU) spends a measurable share of each request
/// on them. linkerd2-proxy makes the same choice.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // rustls needs one process-wide crypto provider; ring is the one built in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let workers = worker_threads(std::env::var("TOKIO_WORKER_THREADS").ok().as_deref());
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
}

/// Workers for `TOKIO_WORKER_THREADS` = `configured` (tokio's own variable,
/// a positive integer) or else the CPUs this process may use.
fn worker_threads(configured: Option<&str>) -> usize {
    configured
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn configured_workers_win_and_nonsense_falls_back_to_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_threads(Some("1")), 1);
        assert_eq!(worker_threads(Some(" 3 ")), 3);
        assert_eq!(worker_threads(Some("0")), cpus);
        assert_eq!(worker_threads(Some("many")), cpus);
        assert_eq!(worker_threads(None), cpus);
    }
}
