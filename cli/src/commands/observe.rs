//! `fleetnet observe`: recent flows from this node's agent, or with
//! `--fleet` from every node through the relay, like `hubble observe`.

use std::{process::ExitCode, time::Duration};

use clap::Args;
use fleetnet_agent::observe::flows::{self, Filter, FlowRecord};

use crate::{
    client::{self, AgentAddress, FleetTarget, Server, UNREACHABLE},
    output::Output,
};

#[derive(Args)]
pub(crate) struct ObserveArgs {
    #[command(flatten)]
    agent: AgentAddress,
    #[command(flatten)]
    target: FleetTarget,
    /// Only FORWARDED or DROPPED flows.
    #[arg(long, value_parser = ["FORWARDED", "DROPPED", "forwarded", "dropped"])]
    verdict: Option<String>,
    /// Only flows with an end in this cluster (by name).
    #[arg(long, value_name = "CLUSTER")]
    cluster: Option<String>,
    /// Only flows with an end in this pod.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pod)]
    pod: Option<(String, String)>,
    /// Only flows with an end in this namespace.
    #[arg(long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// Only flows of this forwarding verdict or drop reason, as in the
    /// metrics (e.g. policy_denied_ingress).
    #[arg(long, value_name = "REASON")]
    reason: Option<String>,
    /// How many of the most recent matching flows to print first.
    #[arg(long, default_value_t = 20)]
    last: usize,
    /// Keep printing new flows until interrupted.
    #[arg(long, short)]
    follow: bool,
    /// Output format: text lines, or one JSON object per line.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn parse_pod(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Ok((namespace.to_string(), name.to_string()))
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

pub(super) fn run(args: &ObserveArgs) -> ExitCode {
    let (server, address) = if args.target.fleet {
        (Server::Relay, args.target.relay)
    } else {
        match args.agent.resolve() {
            Ok(address) => (Server::Agent, address),
            Err(code) => return code,
        }
    };
    let filter = Filter {
        verdict: args.verdict.clone(),
        cluster: args.cluster.clone(),
        pod: args.pod.clone(),
        namespace: args.namespace.clone(),
        reason: args.reason.clone(),
    };
    let print = |flow: &FlowRecord| match args.output {
        Output::Text => println!("{}", flows::render_line(flow)),
        Output::Json => println!(
            "{}",
            serde_json::to_string(flow).expect("a flow always serializes")
        ),
    };
    let mut since = 0;
    let mut first = true;
    let mut stream = None;
    loop {
        let page = match client::flows(server, address, since) {
            Ok(page) => page,
            Err(error) => {
                eprintln!("fleetnet: {error}");
                return ExitCode::from(UNREACHABLE);
            }
        };
        if stream.is_some_and(|stream| stream != page.stream) {
            // The agent (or relay) restarted and numbers anew: all it
            // holds is new to us.
            since = 0;
            stream = Some(page.stream);
            continue;
        }
        stream = Some(page.stream);
        let matching: Vec<_> = page.flows.iter().filter(|f| filter.matches(f)).collect();
        let shown = if first {
            &matching[matching.len().saturating_sub(args.last)..]
        } else {
            &matching[..]
        };
        for flow in shown {
            print(flow);
        }
        first = false;
        since = page.next;
        if !args.follow {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
