//! The `fleetnet` command: the node agent, the fleet controller, and the
//! tools that ask them. One file per command under `commands/`. Built
//! without the `agent` feature it is the controller's binary: the fleet
//! and rollout commands, no datapath.

#[cfg(feature = "agent")]
mod client;
mod commands;
mod etcd_args;
mod output;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::commands::Command;

/// fleetnet joins Kubernetes clusters into one network with eBPF.
#[derive(Parser)]
#[command(name = "fleetnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: `kubectl logs`, files and
        // pipes get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Cli::parse().command.run()
}
