//! The `fleetnet` command: the node agent and its tools.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use dataplane_agent::{
    agent::{self, RunOptions},
    config::AgentConfig,
};
use tracing_subscriber::EnvFilter;

/// fleetnet joins Kubernetes clusters into one network with eBPF.
#[derive(Parser)]
#[command(name = "fleetnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: load the eBPF datapath, attach it to this node's
    /// pods (from the Kubernetes API or a manifests directory) and VXLAN
    /// device, publish this node into the shared etcd keyspace, program the
    /// maps from every cluster's state, and serve until SIGTERM.
    Agent {
        /// Agent configuration file (YAML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// On shutdown, leave the maps pinned so the next agent reuses them
        /// (programs are always detached).
        #[arg(long)]
        keep_pins: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent { config, keep_pins } => run_agent(&config, keep_pins),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleetnet: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(config: &std::path::Path, keep_pins: bool) -> Result<(), Box<dyn std::error::Error>> {
    let config = AgentConfig::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(config, RunOptions { keep_pins }))?;
    Ok(())
}
