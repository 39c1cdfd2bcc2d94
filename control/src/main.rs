//! `isthmus`: the one binary. Subcommands follow kubectl/istioctl conventions
//! (`-o yaml|json`, non-zero exit codes on failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod cli;

#[derive(Debug, Parser)]
#[command(
    name = "isthmus",
    version,
    about = "Multi-cluster service-mesh federation: one mesh, one trust domain, many clusters."
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), overridden by RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate Istio / MCS / Isthmus configuration files like `istioctl analyze`.
    Analyze {
        /// Files or directories (searched recursively for *.yaml, *.yml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The trust-domain CA: create the root, per-cluster intermediates, inspect certificates.
    Ca {
        #[command(subcommand)]
        command: isthmus_identity::CaCommand,
    },
    /// Run one cluster's control plane: config source, federation node, CA, xDS.
    Control(isthmus_control::app::ControlOptions),
    /// Run the data plane as a sidecar, east-west, ingress or egress gateway.
    Gateway(isthmus_gateway::cli::GatewayArgs),
    /// The federation registry: witness, and recovery of a lost quorum.
    Federation {
        #[command(subcommand)]
        command: cli::federation::FederationCommand,
    },
    /// Per connected proxy, per type: synced, NACKed (with the message) or
    /// stale; the registry, federation and config state (like `istioctl proxy-status`).
    Status(cli::status::StatusArgs),
    /// What a connected proxy was last sent: clusters, endpoints, listeners, routes, secrets.
    ProxyConfig(cli::status::ProxyConfigArgs),
    /// Serve the federation dashboard locally from one or more control planes' admin ports.
    Dashboard(cli::dashboard::DashboardArgs),
    /// Three clusters on loopback with live traffic and a failover you can watch.
    Demo(cli::demo::DemoArgs),
    /// Manifests for one cluster: CRDs, RBAC, control plane, gateways, sidecar injector.
    Install(cli::install::InstallArgs),
    /// Sample workloads for the demo and the scenario tests.
    #[command(hide = true)]
    Workload {
        #[command(subcommand)]
        command: cli::workload::WorkloadCommand,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    isthmus_gateway::cli::process::init_logging(&cli.log);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Analyze { paths, output } => {
            let report = isthmus_control::analyze::analyze_paths(&paths);
            match output {
                Output::Text => print!("{}", report.render_text()),
                Output::Json => println!("{}", report.render_json()),
            }
            Ok(if report.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Ca { command } => {
            isthmus_identity::run(command, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Control(opts) => {
            runtime()?.block_on(isthmus_control::app::run(opts, cli::shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Federation { command } => {
            runtime()?.block_on(cli::federation::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway(args) => {
            runtime()?.block_on(isthmus_gateway::cli::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            runtime()?.block_on(cli::status::status(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(args) => {
            runtime()?.block_on(cli::dashboard::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ProxyConfig(args) => {
            runtime()?.block_on(cli::status::proxy_config(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => runtime()?.block_on(cli::demo::run(args)),
        Command::Install(args) => {
            runtime()?.block_on(cli::install::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Workload { command } => {
            runtime()?.block_on(cli::workload::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(isthmus_gateway::cli::process::runtime()?)
}
