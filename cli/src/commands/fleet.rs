//! `fleetnet fleet …`: the fleet controller, and the revisions and
//! strategies it rolls out.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::Subcommand;
use fleetnet_fleet::{
    controller::{self, ControllerConfig},
    membership::observe::{self, ObserveParty},
    model::{Bundle, Strategy},
    render,
};

use crate::{
    etcd_args::EtcdArgs,
    output::{Output, failed, finish, pretty},
};

#[derive(Subcommand)]
pub(crate) enum FleetCommand {
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
    /// The fleet's certificate authority, which signs each joined
    /// cluster's etcd client certificate and the observe API's
    /// certificates (the relay's, the agents').
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Subcommand)]
pub(crate) enum CaCommand {
    /// Make the fleet's CA if there is none (kept in etcd, readable only by
    /// etcd's root), and print its certificate: give it to etcd as
    /// `--trusted-ca-file` so the clusters' certificates are accepted.
    Init {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Write the certificate here instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Issue a certificate of the observe API into a directory (ca.crt,
    /// tls.crt, tls.key): the relay's client certificate, or the serving
    /// certificate of a cluster's agents when the cluster was configured
    /// by hand (`cluster join` issues its members' own).
    Issue {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// For `fleetnet relay` (its --tls-* files).
        #[arg(long, conflicts_with = "cluster", required_unless_present = "cluster")]
        relay: bool,
        /// For every agent of this cluster (their observe.tls).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// The directory to write into (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum RevisionCommand {
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
pub(crate) enum StrategyCommand {
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

/// A YAML document from `path`; the problem as one sentence.
fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub(super) async fn run(command: FleetCommand) -> ExitCode {
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
        FleetCommand::Ca(CaCommand::Issue {
            etcd,
            relay: _,
            cluster,
            out,
        }) => {
            let party = cluster.map_or(ObserveParty::Relay, ObserveParty::Agents);
            let issued = async {
                let mut client = etcd.client().await?;
                observe::issue(&mut client, &party).await
            }
            .await;
            match issued {
                Ok((ca, issued)) => match observe::write(&out, &ca, &issued) {
                    Ok(()) => {
                        eprintln!("wrote ca.crt, tls.crt and tls.key into {}", out.display());
                        ExitCode::SUCCESS
                    }
                    Err(error) => failed(format!("cannot write into {}: {error}", out.display())),
                },
                Err(error) => failed(error),
            }
        }
        FleetCommand::Ca(CaCommand::Init { etcd, out }) => {
            let result = async {
                let mut client = etcd.client().await?;
                fleetnet_fleet::membership::init_ca(&mut client).await
            }
            .await;
            let (ca, made) = match result {
                Ok(made) => made,
                Err(error) => return failed(error),
            };
            eprintln!(
                "{}",
                if made {
                    "the fleet's CA was made"
                } else {
                    "the fleet already has a CA"
                }
            );
            match out {
                Some(path) => match std::fs::write(&path, &ca.cert) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => failed(format!("cannot write {}: {error}", path.display())),
                },
                None => {
                    print!("{}", ca.cert);
                    ExitCode::SUCCESS
                }
            }
        }
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
                etcd.store()
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
            async { etcd.store().await?.revisions().await }.await,
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
            async { etcd.store().await?.revision(number).await }.await,
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
                async { etcd.store().await?.put_strategy(&strategy).await }.await,
                |()| println!("strategy {} stored", strategy.name),
            )
        }
        StrategyCommand::List { etcd } => finish(
            async { etcd.store().await?.strategies().await }.await,
            |strategies| {
                for strategy in strategies {
                    let stages: Vec<&str> =
                        strategy.stages.iter().map(|s| s.name.as_str()).collect();
                    println!("{}: {}", strategy.name, stages.join(" -> "));
                }
            },
        ),
        StrategyCommand::Show { etcd, name } => finish(
            async { etcd.store().await?.strategy(&name).await }.await,
            |strategy| {
                print!(
                    "{}",
                    serde_yaml::to_string(&strategy).expect("a strategy always serializes")
                );
            },
        ),
    }
}
