//! `fleetnet agent`: the node agent.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;
use fleetnet_agent::{
    agent::{self, RunOptions},
    config::AgentConfig,
};

use crate::output::failed;

#[derive(Args)]
pub(crate) struct AgentArgs {
    /// Agent configuration file (YAML).
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// On shutdown, leave the datapath in place: maps and attached
    /// programs stay pinned, pods keep forwarding, and the next agent
    /// takes them over without a gap (restarts, upgrades). Without it,
    /// SIGTERM detaches everything and removes the pins.
    #[arg(long)]
    keep_pins: bool,
}

pub(super) fn run(args: AgentArgs) -> ExitCode {
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(error),
    }
}

fn serve(args: &AgentArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = AgentConfig::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(
        config,
        RunOptions {
            keep_pins: args.keep_pins,
        },
    ))?;
    Ok(())
}
