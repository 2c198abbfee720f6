//! `fleetnet status`: this node's view of the mesh, from its agent.

use std::process::ExitCode;

use clap::Args;

use crate::{
    client::{self, AgentAddress, UNREACHABLE},
    output::Output,
};

#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    agent: AgentAddress,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub(super) fn run(args: &StatusArgs) -> ExitCode {
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
