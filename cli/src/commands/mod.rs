//! Every `fleetnet` subcommand, one module each. The node's commands
//! (`agent`, `status`, `observe`) come with the `agent` feature; without it
//! the binary is the fleet controller's, and carries no datapath.

#[cfg(feature = "agent")]
mod agent;
mod cluster;
mod fleet;
#[cfg(feature = "agent")]
mod observe;
#[cfg(feature = "agent")]
mod relay;
mod rollout;
#[cfg(feature = "agent")]
mod status;

use std::process::ExitCode;

use clap::Subcommand;

use crate::output::failed;

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the node agent: load the eBPF datapath, attach it to this node's
    /// pods (from the Kubernetes API or a manifests directory) and VXLAN
    /// device, publish this node into the shared etcd keyspace, program the
    /// maps from every cluster's state, and serve until SIGTERM.
    #[cfg(feature = "agent")]
    Agent(agent::AgentArgs),
    /// Show this node's agent: ready or not, the fleet revision it runs,
    /// every cluster of the mesh as it sees it (connected, routing, nodes,
    /// endpoints, global services, last update), and how full the BPF maps
    /// are; with --fleet, every node of every cluster, through the relay.
    /// Exits 0 when healthy, 1 when not, 2 when the agent (or the relay)
    /// cannot be reached.
    #[cfg(feature = "agent")]
    Status(status::StatusArgs),
    /// Print flows the datapath reported: every drop and a sample of
    /// forwarded packets (observe.forward-sample), like `hubble observe`;
    /// this node's, or with --fleet every node's, through the relay.
    #[cfg(feature = "agent")]
    Observe(observe::ObserveArgs),
    /// Run the relay: find every node's agent through etcd, read their
    /// status and flows over mutual TLS (the fleet CA's), and serve them
    /// merged to `status --fleet` and `observe --fleet`, like Hubble Relay,
    /// and a web UI at / (the clusters, the traffic between them, flows,
    /// rollouts).
    #[cfg(feature = "agent")]
    Relay(relay::RelayArgs),
    /// A cluster's lifecycle in the fleet: join (with its credentials and
    /// a ready overlay), list, cordon, uncordon, retire.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
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
            #[cfg(feature = "agent")]
            Command::Agent(args) => agent::run(args),
            #[cfg(feature = "agent")]
            Command::Status(args) => status::run(&args),
            #[cfg(feature = "agent")]
            Command::Observe(args) => observe::run(&args),
            #[cfg(feature = "agent")]
            Command::Relay(args) => relay::run(args),
            Command::Cluster(command) => on_runtime(cluster::run(command)),
            Command::Fleet(command) => on_runtime(fleet::run(command)),
            Command::Rollout(command) => on_runtime(rollout::run(command)),
        }
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
