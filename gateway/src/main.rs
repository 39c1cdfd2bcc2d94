//! `isthmus-gateway`: the data plane alone, for sidecars and gateways. The
//! same proxy as `isthmus gateway`, in a binary that carries none of the
//! control plane, so a sidecar maps (and keeps resident) only proxy code.

use std::process::ExitCode;

use clap::Parser;
use isthmus_gateway::cli::{self, process, GatewayArgs};

// mimalloc: a proxy's hot path is small allocations made and freed within
// one request; glibc's malloc cost about 9% of CPU there, mimalloc about
// half that (+12% requests/s, docs/benchmarks.md). Built without its
// transparent-huge-page advice, which made an idle sidecar 10 MB larger.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "isthmus-gateway",
    version,
    about = "The Isthmus data plane: sidecar, east-west, ingress or egress gateway, configured by xDS."
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), overridden by RUST_LOG.
    #[arg(long, default_value = "info")]
    log: String,
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    process::init_logging(&args.log);
    let result = process::runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(cli::run(args.gateway)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
