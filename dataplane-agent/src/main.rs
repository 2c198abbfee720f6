//! The `fleetnet` command: the node agent and its tools.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use dataplane_agent::{
    agent::{self, RunOptions},
    client,
    config::AgentConfig,
    fleet::cli::{self as fleet_cli, FleetCommand, RolloutCommand},
    observe::flows::{self, Filter},
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
        /// On shutdown, leave the datapath in place: maps and attached
        /// programs stay pinned, pods keep forwarding, and the next agent
        /// takes them over without a gap (restarts, upgrades). Without it,
        /// SIGTERM detaches everything and removes the pins.
        #[arg(long)]
        keep_pins: bool,
    },
    /// Show this node's agent: ready or not, the fleet revision it runs,
    /// every cluster of the mesh as it sees it (connected, nodes,
    /// endpoints, global services, last update), and how full the BPF maps
    /// are. Exits 0 when healthy, 1 when
    /// not, 2 when the agent cannot be reached.
    Status {
        #[command(flatten)]
        agent: AgentAddress,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print flows the datapath reported: every drop and a sample of
    /// forwarded packets (observe.forward-sample), like `hubble observe`.
    Observe {
        #[command(flatten)]
        agent: AgentAddress,
        /// Only FORWARDED or DROPPED flows.
        #[arg(long, value_parser = ["FORWARDED", "DROPPED", "forwarded", "dropped"])]
        verdict: Option<String>,
        /// Only flows with an end in this cluster (by name).
        #[arg(long, value_name = "CLUSTER")]
        cluster: Option<String>,
        /// Only flows with an end in this pod.
        #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_pod)]
        pod: Option<(String, String)>,
        /// How many of the most recent matching flows to print first.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Keep printing new flows until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Output format: text lines, or one JSON object per line.
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// The fleet controller, mesh config revisions and rollout strategies.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Roll a revision out stage by stage, watch it, approve, stop,
    /// resume or roll it back.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

/// Which agent to ask.
#[derive(Args)]
struct AgentAddress {
    /// The agent's metrics.listen address [default: 127.0.0.1:9962].
    #[arg(long, value_name = "ADDRESS", conflicts_with = "config")]
    server: Option<String>,
    /// Read the address from this agent configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn parse_pod(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Ok((namespace.to_string(), name.to_string()))
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
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
        Command::Status { agent, output } => return status(&agent, output),
        Command::Observe {
            agent,
            verdict,
            cluster,
            pod,
            last,
            follow,
            output,
        } => {
            let filter = Filter {
                verdict,
                cluster,
                pod,
            };
            return observe(&agent, &filter, last, follow, output);
        }
        Command::Fleet(command) => return on_runtime(fleet_cli::fleet(command)),
        Command::Rollout(command) => return on_runtime(fleet_cli::rollout(command)),
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

/// Runs a fleet command on a small runtime of its own.
fn on_runtime(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(error) => {
            eprintln!("fleetnet: cannot start a runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code when the agent cannot be reached or answers nonsense.
const UNREACHABLE: u8 = 2;

fn address(agent: &AgentAddress) -> Result<std::net::SocketAddr, ExitCode> {
    client::server_address(
        agent.server.as_deref(),
        agent.config.as_deref().map(Path::new),
    )
    .map_err(|error| {
        eprintln!("fleetnet: {error}");
        ExitCode::from(UNREACHABLE)
    })
}

fn status(agent: &AgentAddress, output: Output) -> ExitCode {
    let address = match address(agent) {
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
    match output {
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

fn observe(
    agent: &AgentAddress,
    filter: &Filter,
    last: usize,
    follow: bool,
    output: Output,
) -> ExitCode {
    let address = match address(agent) {
        Ok(address) => address,
        Err(code) => return code,
    };
    let print = |flow: &flows::FlowRecord| match output {
        Output::Text => println!("{}", flows::render_line(flow)),
        Output::Json => println!(
            "{}",
            serde_json::to_string(flow).expect("a flow always serializes")
        ),
    };
    let mut since = 0;
    let mut first = true;
    loop {
        let page = match client::flows(address, since) {
            Ok(page) => page,
            Err(error) => {
                eprintln!("fleetnet: {error}");
                return ExitCode::from(UNREACHABLE);
            }
        };
        let matching: Vec<_> = page.flows.iter().filter(|f| filter.matches(f)).collect();
        let shown = if first {
            &matching[matching.len().saturating_sub(last)..]
        } else {
            &matching[..]
        };
        for flow in shown {
            print(flow);
        }
        first = false;
        since = page.next;
        if !follow {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
