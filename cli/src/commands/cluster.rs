//! `fleetnet cluster …`: a cluster's lifecycle in the fleet, run by the
//! fleet's admin against the shared etcd: join, list, cordon, uncordon,
//! retire.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Subcommand;
use fleetnet_fleet::{
    membership::{
        join::{JoinRequest, join},
        overlay,
        retire::{self, drain, set_state},
        view::{ClusterRow, rows},
    },
    store::StoreError,
};
use fleetnet_store::records::MemberState;
use ipnet::Ipv4Net;

use crate::{
    etcd_args::EtcdArgs,
    output::{Output, failed, finish, pretty},
};

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Join a cluster to the fleet: claim its name, id and pod CIDRs, make
    /// its etcd user and role (writing only its own keys) and its
    /// credentials (a password, and a client certificate from the fleet's
    /// CA whose common name is the user), and write an overlay to apply
    /// with `kubectl apply -k DIR`. Refuses, writing nothing, a name, id
    /// or CIDR already taken. Joining again with the same parameters
    /// issues new credentials and writes the overlay again.
    Join {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The cluster's name: a DNS label, unique in the fleet.
        name: String,
        /// Every pod address of the cluster (its CNI's cluster CIDRs).
        #[arg(long, value_name = "CIDR", value_delimiter = ',', required = true)]
        pod_cidr: Vec<Ipv4Net>,
        /// Its id, 1..65535 [default: the lowest free one].
        #[arg(long)]
        id: Option<u16>,
        /// Labels rollout stages select it by, e.g. env=prod,region=eu.
        #[arg(long, value_name = "KEY=VALUE", value_delimiter = ',')]
        labels: Vec<String>,
        /// Where the overlay is written [default: ./NAME].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The shared etcd's client URLs as the cluster's grpc-proxy reaches
        /// them [default: --etcd].
        #[arg(long, value_name = "URL", value_delimiter = ',')]
        upstream: Vec<String>,
    },
    /// Every cluster: id, pod CIDRs, labels, state (joined, active while a
    /// node publishes, cordoned, draining, retired; registered for one set
    /// up by hand), nodes, endpoints, exported services, fleet revision
    /// and the versions its agents run.
    List {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[arg(long, short, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Cordon a cluster: other clusters stop choosing its backends for new
    /// connections (unless no other backend is left); established ones
    /// keep theirs, and its own pods work as before.
    Cordon {
        #[command(flatten)]
        etcd: EtcdArgs,
        name: String,
    },
    /// Undo `cordon`.
    Uncordon {
        #[command(flatten)]
        etcd: EtcdArgs,
        name: String,
    },
    /// Retire a cluster: cordon it, wait until no other cluster has a
    /// connection to its backends (or --drain-timeout passes), then delete
    /// every key it had in etcd and its etcd user and role, freeing its
    /// name and id. Its agents stop. Interrupted, run it again.
    Retire {
        #[command(flatten)]
        etcd: EtcdArgs,
        name: String,
        /// How long to wait for connections to its backends to end.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
}

pub(super) async fn run(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Join {
            etcd,
            name,
            pod_cidr,
            id,
            labels,
            out,
            upstream,
        } => {
            let labels = match parse_labels(&labels) {
                Ok(labels) => labels,
                Err(error) => return failed(error),
            };
            let request = JoinRequest {
                name: name.clone(),
                pod_cidrs: pod_cidr,
                id,
                labels,
                proxy_names: overlay::proxy_names(),
            };
            if let Err(error) = request.check() {
                return failed(error);
            }
            let dir = out.unwrap_or_else(|| PathBuf::from(&name));
            let upstream = if upstream.is_empty() {
                etcd.endpoints.clone()
            } else {
                upstream
            };
            let result = async {
                let mut client = etcd.client().await?;
                join(&mut client, &request).await
            }
            .await;
            let mut joined = match result {
                Ok(joined) => joined,
                Err(error) => return failed(error),
            };
            // The cluster trusts etcd's server certificate too, when etcd's
            // CA is not the fleet's.
            if let Some(path) = &etcd.etcd_ca {
                match std::fs::read_to_string(path) {
                    Ok(etcd_ca) if !joined.credentials.ca.contains(etcd_ca.trim()) => {
                        joined.credentials.ca = format!("{}{etcd_ca}", joined.credentials.ca);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        return failed(format!("cannot read {}: {error}", path.display()));
                    }
                }
            }
            if let Err(error) = overlay::write(&dir, &joined, &upstream) {
                return failed(format!(
                    "cluster {name} joined, but its overlay could not be written to {}: {error}; \
                     join it again with the same parameters to write it",
                    dir.display()
                ));
            }
            println!(
                "cluster {name} {} with id {}, etcd user {}; its overlay is in {}\nnext: kubectl apply -k {}",
                if joined.again {
                    "had joined: new credentials issued"
                } else {
                    "joined"
                },
                joined.member.id,
                joined.credentials.user,
                dir.display(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        ClusterCommand::List { etcd, output } => finish(
            async { rows(&mut etcd.client().await?).await }.await,
            |rows| match output {
                Output::Json => println!("{}", pretty(&rows)),
                Output::Text => print!("{}", table(&rows)),
            },
        ),
        ClusterCommand::Cordon { etcd, name } => finish(
            async {
                let from = [MemberState::Joined];
                set_state(
                    &mut etcd.client().await?,
                    &name,
                    &from,
                    MemberState::Cordoned,
                )
                .await
            }
            .await,
            |_| {
                println!(
                    "cluster {name} cordoned: other clusters choose its backends for no new connection"
                )
            },
        ),
        ClusterCommand::Uncordon { etcd, name } => finish(
            async {
                let from = [MemberState::Cordoned];
                set_state(&mut etcd.client().await?, &name, &from, MemberState::Joined).await
            }
            .await,
            |_| println!("cluster {name} uncordoned"),
        ),
        ClusterCommand::Retire {
            etcd,
            name,
            drain_timeout,
        } => finish(
            async { retire_cluster(&etcd, &name, drain_timeout).await }.await,
            |()| {},
        ),
    }
}

/// Cordon and drain (printing progress), mark retired, wait for its
/// agents to leave, then delete everything of it.
async fn retire_cluster(etcd: &EtcdArgs, name: &str, timeout: Duration) -> Result<(), StoreError> {
    let mut client = etcd.client().await?;
    let draining = [
        MemberState::Joined,
        MemberState::Cordoned,
        MemberState::Draining,
    ];
    let member = fleetnet_fleet::membership::read_member(&mut client, name).await?;
    if member.live() {
        let record = set_state(&mut client, name, &draining, MemberState::Draining).await?;
        println!(
            "cluster {name} draining: other clusters choose its backends for no new connection"
        );
        let started = Instant::now();
        let mut last = None;
        loop {
            let status = drain(&mut client, name, record.since).await?;
            if status.done() {
                println!("no connection to {name}'s backends is left");
                break;
            }
            if started.elapsed() >= timeout {
                println!(
                    "drain timeout ({}s) passed with {} connection(s) to {name}'s backends left \
                     (on {}); retiring anyway",
                    timeout.as_secs(),
                    status.connections,
                    status.waiting_for.join(", ")
                );
                break;
            }
            let line = format!(
                "waiting: {} connection(s) to {name}'s backends, on or not yet counted by {} \
                 node(s): {}",
                status.connections,
                status.waiting_for.len(),
                status.waiting_for.join(", ")
            );
            if last.as_ref() != Some(&line) {
                println!("{line}");
                last = Some(line);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    set_state(&mut client, name, &draining, MemberState::Retired).await?;
    // Its agents see it and leave at once (revoking their leases); keys of
    // agents that are not running are deleted below all the same.
    let started = Instant::now();
    while started.elapsed() < AGENTS_LEAVE {
        let nodes = fleetnet_fleet::membership::view::node_count(&mut client, name).await?;
        if nodes == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deleted = retire::remove(&mut client, name).await?;
    println!(
        "cluster {name} retired: {} key(s) deleted, etcd user {}; its name and id are free",
        deleted.keys,
        if deleted.user {
            "deleted"
        } else {
            "already gone"
        }
    );
    Ok(())
}

/// How long retiring waits for the cluster's agents to leave the mesh by
/// themselves before deleting their keys.
const AGENTS_LEAVE: Duration = Duration::from_secs(10);

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, String> {
    labels
        .iter()
        .filter(|label| !label.is_empty())
        .map(|label| {
            label
                .split_once('=')
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .ok_or_else(|| format!("label {label:?} is not KEY=VALUE"))
        })
        .collect()
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("{text:?} is not a duration like 90s, 5m or 1h")),
    };
    Ok(Duration::from_secs(number * seconds))
}

fn table(rows: &[ClusterRow]) -> String {
    let mut out = format!(
        "{:<16} {:>5}  {:<18} {:<10} {:>5} {:>9} {:>8} {:>8}  {:<10} {}\n",
        "NAME",
        "ID",
        "POD CIDRS",
        "STATE",
        "NODES",
        "ENDPOINTS",
        "SERVICES",
        "REVISION",
        "VERSIONS",
        "LABELS"
    );
    for row in rows {
        let cidrs: Vec<String> = row.pod_cidrs.iter().map(ToString::to_string).collect();
        let labels: Vec<String> = row
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let versions: Vec<&str> = row.versions.iter().map(String::as_str).collect();
        out += &format!(
            "{:<16} {:>5}  {:<18} {:<10} {:>5} {:>9} {:>8} {:>8}  {:<10} {}\n",
            row.name,
            row.id,
            cidrs.join(","),
            row.state,
            row.nodes,
            row.endpoints,
            row.services,
            row.revision.map_or("-".into(), |r| r.to_string()),
            if versions.is_empty() {
                "-".into()
            } else {
                versions.join(",")
            },
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
        );
    }
    out
}
