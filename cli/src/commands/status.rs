//! `fleetnet status`: this node's view of the mesh, from its agent, or
//! with `--fleet` every node's, from the relay.

use std::process::ExitCode;

use clap::Args;

use crate::{
    client::{self, AgentAddress, FleetTarget, UNREACHABLE},
    output::Output,
};

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    agent: AgentAddress,
    #[command(flatten)]
    target: FleetTarget,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub(super) fn run(args: &StatusArgs) -> ExitCode {
    if args.target.fleet {
        return fleet(args);
    }
    let address = match args.agent.resolve() {
        Ok(address) => address,
        Err(code) => return code,
    };
    let report = match client::status(address) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("fleetnet: {error}");
            return ExitCode::from(UNREACHABLE);
        }
    };
    match args.output {
        Output::Text => print!("{}", report.render_text()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serializes")
        ),
    }
    if report.problems().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every node, from the relay: a table and the problems.
fn fleet(args: &StatusArgs) -> ExitCode {
    let status = match client::fleet_status(args.target.relay) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("fleetnet: {error}");
            return ExitCode::from(UNREACHABLE);
        }
    };
    match args.output {
        Output::Text => print!("{}", status.render_text()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("a status always serializes")
        ),
    }
    if status.problems().is_empty() && !status.clusters.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
