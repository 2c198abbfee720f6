//! `fleetnet cluster list`: every member and every cluster registered
//! without joining, with what the mesh and the agents' reports say of it.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, GetOptions};
use ipnet::Ipv4Net;
use serde::Serialize;

use fleetnet_store::{fleet_keys, keys, records::MemberState};

use super::{admin_error, read_fleet};
use crate::{
    model::{Report, Target},
    store::StoreError,
};

/// One cluster as `cluster list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterRow {
    pub name: String,
    pub id: u16,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub labels: BTreeMap<String, String>,
    /// joined, active (joined, and a node publishes), cordoned, draining,
    /// retired, or registered (in the mesh without having joined).
    pub state: String,
    pub nodes: usize,
    pub endpoints: usize,
    /// Global services it exports backends of (`namespace/name`).
    pub services: usize,
    /// The fleet revision its agents are to run, if a rollout set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The versions its agents report.
    pub versions: BTreeSet<String>,
}

/// Every cluster, by name.
pub async fn rows(client: &mut Client) -> Result<Vec<ClusterRow>, StoreError> {
    let fleet = read_fleet(client).await?;
    let mut rows = Vec::new();
    let members = fleet.members.values().map(|member| {
        (
            member.name.clone(),
            member.record.id,
            member.record.pod_cidrs.clone(),
            member.record.labels.clone(),
            Some(member.record.state),
        )
    });
    let registered = fleet.registered.iter().map(|(name, record)| {
        (
            name.clone(),
            record.id,
            record.pod_cidrs.clone(),
            record.labels.clone(),
            None,
        )
    });
    for (name, id, pod_cidrs, labels, state) in members.chain(registered) {
        let retired = state == Some(MemberState::Retired);
        let mut row = ClusterRow {
            name: name.clone(),
            id,
            pod_cidrs,
            labels,
            state: String::new(),
            nodes: 0,
            endpoints: 0,
            services: 0,
            revision: None,
            versions: BTreeSet::new(),
        };
        if !retired {
            fill(client, &mut row).await?;
        }
        row.state = match state {
            Some(MemberState::Joined) if row.nodes > 0 => "active".into(),
            Some(state) => state.label().into(),
            None => "registered".into(),
        };
        rows.push(row);
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// The mesh's and the reports' figures of `row`'s cluster.
async fn fill(client: &mut Client, row: &mut ClusterRow) -> Result<(), StoreError> {
    let name = row.name.clone();
    row.nodes = node_count(client, &name).await?;
    // Exported endpoints and those the cluster keeps to itself.
    row.endpoints = keys_under(client, &keys::endpoints_of(&name)).await?.len()
        + keys_under(client, &keys::local_endpoints_of(&name))
            .await?
            .len();
    row.services = keys_under(client, &keys::backends_of(&name))
        .await?
        .iter()
        .filter_map(|key| match keys::parse(key) {
            Some(keys::Key::Backend {
                namespace, service, ..
            }) => Some((namespace, service)),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .len();
    let target = client
        .get(fleet_keys::target(&name), None)
        .await
        .map_err(|error| admin_error("reading a cluster's target", error))?;
    row.revision = target
        .kvs()
        .first()
        .and_then(|kv| crate::model::decode::<Target>(kv.value()).ok())
        .map(|target| target.revision);
    let reports = client
        .get(
            fleet_keys::reports_of(&name),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|error| admin_error("reading the agents' reports", error))?;
    row.versions = reports
        .kvs()
        .iter()
        .filter_map(|kv| crate::model::decode::<Report>(kv.value()).ok())
        .map(|report| report.version)
        .filter(|version| !version.is_empty())
        .collect();
    Ok(())
}

/// How many nodes of cluster `name` publish.
pub async fn node_count(client: &mut Client, name: &str) -> Result<usize, StoreError> {
    Ok(
        keys_under(client, &format!("{}nodes/{name}/", keys::PREFIX))
            .await?
            .len(),
    )
}

async fn keys_under(client: &mut Client, prefix: &str) -> Result<Vec<String>, StoreError> {
    let response = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(|error| admin_error("reading the mesh", error))?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect())
}
