//! `fleetnet fleet …` and `fleetnet rollout …`: the commands that create
//! revisions and strategies, run the controller, and start and steer runs.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Subcommand, ValueEnum};

use super::{
    controller::{self, ControllerConfig},
    model::{Bundle, Gate, RunState, StageState, Strategy},
    render, rollout,
    store::{FleetStore, StoreError},
};
use crate::clock::unix_now;
use crate::mesh::etcd::{self, Credentials, TlsFiles};

/// Where etcd is.
#[derive(Args, Clone)]
pub struct EtcdArgs {
    /// etcd endpoint URL (repeat or separate with commas).
    #[arg(
        long = "etcd",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// CA certificate of etcd's TLS endpoint.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Key of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user to log in as (etcd with authentication enabled).
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the password of --etcd-user.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    fn credentials(&self) -> Option<Credentials> {
        Some(Credentials {
            username: self.etcd_user.clone()?,
            password_file: self.etcd_password_file.clone()?,
        })
    }

    fn tls(&self) -> Option<TlsFiles> {
        self.etcd_ca.as_ref().map(|ca| TlsFiles {
            ca_file: ca.clone(),
            cert_file: self.etcd_cert.clone(),
            key_file: self.etcd_key.clone(),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Run the fleet controller: moves runs stage by stage, checks their
    /// gates, and rolls a failed stage back. Run several; one acts.
    Controller {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// This controller's name [default: the host name].
        #[arg(long)]
        name: Option<String>,
        /// Serve /metrics and /healthz on this address.
        #[arg(long, value_name = "ADDRESS")]
        metrics: Option<String>,
        /// Lease of the controller key: how soon a standby takes over.
        #[arg(long, default_value_t = 10)]
        lease_ttl_seconds: u64,
        /// How often runs are moved.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Mesh config revisions: immutable, numbered bundles of NetworkPolicies
    /// (applied in every cluster) and dataplane settings.
    #[command(subcommand)]
    Revision(RevisionCommand),
    /// Strategies: how a revision travels through stages of clusters.
    #[command(subcommand)]
    Strategy(StrategyCommand),
}

#[derive(Subcommand)]
pub enum RevisionCommand {
    /// Store a bundle (YAML: `policies:` and `settings:`) as the next
    /// revision; prints its number.
    Create {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The bundle.
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
        /// What the revision changes, shown by `revision list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Store it even if its policies do not parse (agents will reject
        /// it, keeping what they have).
        #[arg(long)]
        force: bool,
    },
    /// Every revision: number, time, description, contents in short.
    List {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// One revision in full.
    Show {
        #[command(flatten)]
        etcd: EtcdArgs,
        number: u64,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum StrategyCommand {
    /// Create or replace a strategy from a YAML file.
    Apply {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The strategy (YAML: `name:` and `stages:`).
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
    },
    /// Every strategy and its stages.
    List {
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// One strategy as YAML.
    Show {
        #[command(flatten)]
        etcd: EtcdArgs,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Roll a revision out with a strategy over the clusters registered
    /// now; prints the run's number.
    Start {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The revision to roll out.
        #[arg(long)]
        revision: u64,
        /// The strategy's name.
        #[arg(long)]
        strategy: String,
    },
    /// Every run, or one in full (stages, clusters, times, reasons).
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
        run: Option<u64>,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Let a stage waiting for approval go on.
    Approve {
        #[command(flatten)]
        etcd: EtcdArgs,
        run: u64,
        /// The stage [default: the one waiting].
        #[arg(long)]
        stage: Option<String>,
    },
    /// Pause a run: nothing more changes until it is resumed.
    Stop {
        #[command(flatten)]
        etcd: EtcdArgs,
        run: u64,
    },
    /// Go on with a stopped run.
    Resume {
        #[command(flatten)]
        etcd: EtcdArgs,
        run: u64,
    },
    /// Put every cluster the run changed back to its previous revision.
    Rollback {
        #[command(flatten)]
        etcd: EtcdArgs,
        run: u64,
    },
}

fn failed(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("fleetnet: {error}");
    ExitCode::FAILURE
}

/// Prints what a command got, or why it failed as one sentence.
fn finish<T, E: std::fmt::Display>(result: Result<T, E>, print: impl FnOnce(T)) -> ExitCode {
    match result {
        Ok(value) => {
            print(value);
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}

async fn store(etcd: &EtcdArgs) -> Result<FleetStore, StoreError> {
    let client = etcd::connect_as(
        &etcd.endpoints,
        etcd.tls().as_ref(),
        etcd.credentials().as_ref(),
    )
    .await?;
    Ok(FleetStore::new(client))
}

fn read_yaml<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub async fn fleet(command: FleetCommand) -> ExitCode {
    match command {
        FleetCommand::Controller {
            etcd,
            name,
            metrics,
            lease_ttl_seconds,
            interval_ms,
        } => {
            let metrics = match metrics.map(|m| m.parse()) {
                Some(Ok(address)) => Some(address),
                Some(Err(_)) => {
                    return failed("--metrics needs an address:port like 127.0.0.1:9963");
                }
                None => None,
            };
            let name = name.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "controller".into())
            });
            let config = ControllerConfig {
                tls: etcd.tls(),
                user: etcd.credentials(),
                endpoints: etcd.endpoints,
                name,
                lease_ttl: Duration::from_secs(lease_ttl_seconds.max(2)),
                interval: Duration::from_millis(interval_ms.max(50)),
                metrics,
            };
            match controller::run(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => failed(error),
            }
        }
        FleetCommand::Revision(command) => revision(command).await,
        FleetCommand::Strategy(command) => strategy(command).await,
    }
}

async fn revision(command: RevisionCommand) -> ExitCode {
    match command {
        RevisionCommand::Create {
            etcd,
            file,
            description,
            force,
        } => {
            let bundle: Bundle = match read_yaml(&file) {
                Ok(bundle) => bundle,
                Err(error) => return failed(error),
            };
            // Checked as a cluster would read it; the cluster name only
            // matters for peers without a cluster label.
            if let Err(error) = bundle.validate("any")
                && !force
            {
                return failed(format!(
                    "{}: {error}; fix it (or pass --force to store it anyway)",
                    file.display()
                ));
            }
            let result = async {
                store(&etcd)
                    .await?
                    .create_revision(bundle, description)
                    .await
            }
            .await;
            finish(result, |revision| {
                println!("{}", revision.number);
            })
        }
        RevisionCommand::List { etcd } => finish(
            async { store(&etcd).await?.revisions().await }.await,
            |revisions| {
                for revision in revisions {
                    print!("{}", render::revision_text(&revision));
                }
            },
        ),
        RevisionCommand::Show {
            etcd,
            number,
            output,
        } => finish(
            async { store(&etcd).await?.revision(number).await }.await,
            |revision| match output {
                Output::Text => print!("{}", render::revision_text(&revision)),
                Output::Json => println!("{}", pretty(&revision)),
            },
        ),
    }
}

async fn strategy(command: StrategyCommand) -> ExitCode {
    match command {
        StrategyCommand::Apply { etcd, file } => {
            let strategy: Strategy = match read_yaml(&file) {
                Ok(strategy) => strategy,
                Err(error) => return failed(error),
            };
            finish(
                async { store(&etcd).await?.put_strategy(&strategy).await }.await,
                |()| println!("strategy {} stored", strategy.name),
            )
        }
        StrategyCommand::List { etcd } => finish(
            async { store(&etcd).await?.strategies().await }.await,
            |strategies| {
                for strategy in strategies {
                    let stages: Vec<&str> =
                        strategy.stages.iter().map(|s| s.name.as_str()).collect();
                    println!("{}: {}", strategy.name, stages.join(" -> "));
                }
            },
        ),
        StrategyCommand::Show { etcd, name } => finish(
            async { store(&etcd).await?.strategy(&name).await }.await,
            |strategy| {
                print!(
                    "{}",
                    serde_yaml::to_string(&strategy).expect("a strategy always serializes")
                );
            },
        ),
    }
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("fleet documents always serialize")
}

pub async fn rollout(command: RolloutCommand) -> ExitCode {
    match command {
        RolloutCommand::Start {
            etcd,
            revision,
            strategy,
        } => finish(
            async { store(&etcd).await?.start_run(revision, &strategy).await }.await,
            |run| {
                println!("{}", run.id);
            },
        ),
        RolloutCommand::Status { etcd, run, output } => status(&etcd, run, output).await,
        RolloutCommand::Approve { etcd, run, stage } => {
            let change = move |r: &mut super::model::Run| {
                if r.state.is_finished() {
                    return Err(format!(
                        "run {} is already {}",
                        r.id,
                        render::lower(r.state)
                    ));
                }
                let waiting = r
                    .stages
                    .iter_mut()
                    .zip(&r.strategy.stages)
                    .find(|(s, spec)| {
                        stage.as_ref().map_or_else(
                            || {
                                s.state == StageState::Gating
                                    && matches!(spec.gates.get(s.gate), Some(Gate::Approval {}))
                            },
                            |name| s.name == *name,
                        )
                    });
                match waiting {
                    Some((s, _)) => {
                        s.approved = true;
                        Ok(Vec::new())
                    }
                    None => Err(match &stage {
                        Some(name) => format!("run {} has no stage {name}", r.id),
                        None => format!("run {} has no stage waiting for approval", r.id),
                    }),
                }
            };
            steer(&etcd, run, change, "approved").await
        }
        RolloutCommand::Stop { etcd, run } => {
            let change = |r: &mut super::model::Run| {
                require(r, RunState::Running)?;
                r.state = RunState::Stopped;
                Ok(Vec::new())
            };
            steer(&etcd, run, change, "stopped").await
        }
        RolloutCommand::Resume { etcd, run } => {
            let change = |r: &mut super::model::Run| {
                require(r, RunState::Stopped)?;
                rollout::resume(r, unix_now());
                Ok(Vec::new())
            };
            steer(&etcd, run, change, "resumed").await
        }
        RolloutCommand::Rollback { etcd, run } => {
            let change = |r: &mut super::model::Run| {
                if r.state == RunState::RolledBack {
                    return Err(format!("run {} is already rolled back", r.id));
                }
                Ok(rollout::roll_back(r, unix_now()))
            };
            steer(&etcd, run, change, "rolled back").await
        }
    }
}

/// The sentence for a run not in `state`.
fn require(run: &super::model::Run, state: RunState) -> Result<(), String> {
    if run.state == state {
        Ok(())
    } else {
        Err(format!(
            "run {} is {}, not {}",
            run.id,
            render::lower(run.state),
            render::lower(state)
        ))
    }
}

async fn steer(
    etcd: &EtcdArgs,
    id: u64,
    change: impl Fn(&mut super::model::Run) -> Result<Vec<rollout::Action>, String>,
    done: &str,
) -> ExitCode {
    finish(
        async { store(etcd).await?.update_run(id, change).await }.await,
        |run| {
            println!("run {} {done}", run.id);
        },
    )
}

async fn status(etcd: &EtcdArgs, id: Option<u64>, output: Output) -> ExitCode {
    let result = async {
        let mut store = store(etcd).await?;
        match id {
            None => Ok((
                store.runs().await?.into_iter().map(|(r, _)| r).collect(),
                Vec::new(),
            )),
            Some(id) => {
                let (run, _) = store.run(id).await?;
                let in_run: std::collections::BTreeSet<&str> = run
                    .stages
                    .iter()
                    .flat_map(|s| s.clusters.iter().map(|c| c.name.as_str()))
                    .chain(run.unselected.iter().map(String::as_str))
                    .collect();
                let new: Vec<String> = store
                    .clusters()
                    .await?
                    .into_keys()
                    .filter(|name| !in_run.contains(name.as_str()))
                    .collect();
                Ok::<_, StoreError>((vec![run], new))
            }
        }
    }
    .await;
    let (runs, new): (Vec<super::model::Run>, Vec<String>) = match result {
        Ok(found) => found,
        Err(error) => return failed(error),
    };
    match (output, id) {
        (Output::Json, Some(_)) => println!("{}", pretty(&runs[0])),
        (Output::Json, None) => println!("{}", pretty(&runs)),
        (Output::Text, Some(_)) => print!("{}", render::run_text(&runs[0], unix_now(), &new)),
        (Output::Text, None) => print!("{}", render::runs_table(&runs)),
    }
    ExitCode::SUCCESS
}
