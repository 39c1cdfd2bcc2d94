//! `isthmus workload`: sample applications for the demo and the scenario
//! tests, so they need no binary besides `isthmus` (hidden from help).

use std::net::SocketAddr;

use anyhow::Context;
use isthmus_multicluster_tests::echo::{self, Identity};

#[derive(Debug, clap::Subcommand)]
pub enum WorkloadCommand {
    /// An HTTP echo server answering with its service, cluster, zone and
    /// version as JSON (`/status/NNN` answers with that status).
    Echo(EchoArgs),
}

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub service: String,
    #[arg(long)]
    pub cluster: String,
    #[arg(long, default_value = "")]
    pub zone: String,
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Call this address (a sidecar's outbound listener) on every request
    /// and embed its answer, like productpage calling reviews.
    #[arg(long)]
    pub call: Option<SocketAddr>,
    /// The Host header of those calls (the called service's name).
    #[arg(long, requires = "call")]
    pub call_host: Option<String>,
}

pub async fn run(cmd: WorkloadCommand) -> anyhow::Result<()> {
    match cmd {
        WorkloadCommand::Echo(a) => {
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {}; is another process using it?",
                        a.listen
                    )
                })?;
            tracing::info!(address = %a.listen, service = %a.service, cluster = %a.cluster, version = %a.version, "echo workload listening");
            let me = Identity {
                service: a.service,
                cluster: a.cluster,
                zone: a.zone,
                version: a.version,
            };
            let upstream = a.call.map(|target| echo::Upstream {
                target,
                host: a.call_host.clone().unwrap_or_else(|| target.to_string()),
            });
            tokio::select! {
                r = echo::serve_calling(listener, me, upstream) => r.context("echo server stopped")?,
                _ = super::shutdown_signal() => {}
            }
            Ok(())
        }
    }
}
