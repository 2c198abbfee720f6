//! `fleetnet rollout …`: start runs, watch them, approve, stop, resume
//! and roll them back.

use std::process::ExitCode;

use clap::Subcommand;
use fleetnet_fleet::{
    model::{Gate, Run, RunState, StageState},
    render, rollout,
    store::StoreError,
};
use fleetnet_store::time::unix_now;

use crate::{
    etcd_args::EtcdArgs,
    output::{Output, failed, finish, pretty},
};

#[derive(Subcommand)]
pub(crate) enum RolloutCommand {
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
    /// Let a stage waiting for approval go on (an approval gate, or a
    /// Prometheus gate paused by its outcome).
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

pub(super) async fn run(command: RolloutCommand) -> ExitCode {
    match command {
        RolloutCommand::Start {
            etcd,
            revision,
            strategy,
        } => finish(
            async { etcd.store().await?.start_run(revision, &strategy).await }.await,
            |run| {
                println!("{}", run.id);
            },
        ),
        RolloutCommand::Status { etcd, run, output } => status(&etcd, run, output).await,
        RolloutCommand::Approve { etcd, run, stage } => {
            let change = move |r: &mut Run| {
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
                                    && (s.paused.is_some()
                                        || matches!(
                                            spec.gates.get(s.gate),
                                            Some(Gate::Approval {})
                                        ))
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
            let change = |r: &mut Run| {
                require(r, RunState::Running)?;
                r.state = RunState::Stopped;
                Ok(Vec::new())
            };
            steer(&etcd, run, change, "stopped").await
        }
        RolloutCommand::Resume { etcd, run } => {
            let change = |r: &mut Run| {
                require(r, RunState::Stopped)?;
                rollout::resume(r, unix_now());
                Ok(Vec::new())
            };
            steer(&etcd, run, change, "resumed").await
        }
        RolloutCommand::Rollback { etcd, run } => {
            let change = |r: &mut Run| {
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
fn require(run: &Run, state: RunState) -> Result<(), String> {
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
    change: impl Fn(&mut Run) -> Result<Vec<rollout::Action>, String>,
    done: &str,
) -> ExitCode {
    finish(
        async { etcd.store().await?.update_run(id, change).await }.await,
        |run| {
            println!("run {} {done}", run.id);
        },
    )
}

async fn status(etcd: &EtcdArgs, id: Option<u64>, output: Output) -> ExitCode {
    let result = async {
        let mut store = etcd.store().await?;
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
    let (runs, new): (Vec<Run>, Vec<String>) = match result {
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
