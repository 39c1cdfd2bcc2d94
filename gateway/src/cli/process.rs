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
/// process may run on (a proxy pinned to one core gets one worker).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // rustls needs one process-wide crypto provider; ring is the one built in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
