//! Every `fleetnet` subcommand, one module each.

mod agent;
mod fleet;
mod observe;
mod rollout;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

use crate::output::failed;

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the node agent: load the eBPF datapath, attach it to this node's
    /// pods (from the Kubernetes API or a manifests directory) and VXLAN
    /// device, publish this node into the shared etcd keyspace, program the
    /// maps from every cluster's state, and serve until SIGTERM.
    Agent(agent::AgentArgs),
    /// Show this node's agent: ready or not, the fleet revision it runs,
    /// every cluster of the mesh as it sees it (connected, nodes,
    /// endpoints, global services, last update), and how full the BPF maps
    /// are. Exits 0 when healthy, 1 when
    /// not, 2 when the agent cannot be reached.
    Status(status::StatusArgs),
    /// Print flows the datapath reported: every drop and a sample of
    /// forwarded packets (observe.forward-sample), like `hubble observe`.
    Observe(observe::ObserveArgs),
    /// The fleet controller, mesh config revisions and rollout strategies.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Roll a revision out stage by stage, watch it, approve, stop,
    /// resume or roll it back.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
}

impl Command {
    pub(crate) fn run(self) -> ExitCode {
        match self {
            Command::Agent(args) => agent::run(args),
            Command::Status(args) => status::run(&args),
            Command::Observe(args) => observe::run(&args),
            Command::Fleet(command) => on_runtime(fleet::run(command)),
            Command::Rollout(command) => on_runtime(rollout::run(command)),
        }
    }
}

/// Which agent to ask.
#[derive(Args)]
pub(crate) struct AgentAddress {
    /// The agent's metrics.listen address [default: 127.0.0.1:9962].
    #[arg(long, value_name = "ADDRESS", conflicts_with = "config")]
    server: Option<String>,
    /// Read the address from this agent configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Exit code when the agent cannot be reached or answers nonsense.
const UNREACHABLE: u8 = 2;

impl AgentAddress {
    fn resolve(&self) -> Result<std::net::SocketAddr, ExitCode> {
        crate::client::server_address(self.server.as_deref(), self.config.as_deref()).map_err(
            |error| {
                eprintln!("fleetnet: {error}");
                ExitCode::from(UNREACHABLE)
            },
        )
    }
}

/// Runs a fleet command on a small runtime of its own.
fn on_runtime(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(error) => failed(format!("cannot start a runtime: {error}")),
    }
}
