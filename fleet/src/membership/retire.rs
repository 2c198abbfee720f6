//! Cordoning and retiring a member. A state change is one compare-and-swap
//! on the member record; retiring is cordon, drain (every other cluster's
//! agents report their live connections to the member's backends), then
//! deleting everything of it. Each step can be run again after an
//! interruption and goes on from where the last one stopped.

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use fleetnet_store::{
    fleet_keys, keys,
    records::{MemberRecord, MemberState, Record},
    roles::member_user,
    time::unix_now,
};

use super::{Member, admin_error, read_member};
use crate::{model::Report, store::StoreError};

/// Moves member `name` to `to` if it is in one of `from`; already in `to`
/// is fine. Returns the record as written.
pub async fn set_state(
    client: &mut Client,
    name: &str,
    from: &[MemberState],
    to: MemberState,
) -> Result<MemberRecord, StoreError> {
    for _ in 0..16 {
        let member = read_member(client, name).await?;
        let state = member.record.state;
        if state == to {
            return Ok(member.record);
        }
        if !from.contains(&state) {
            return Err(StoreError::Conflict(format!(
                "cluster {name} is {}; only a cluster that is {} can become {}",
                state.label(),
                from.iter()
                    .map(|state| state.label())
                    .collect::<Vec<_>>()
                    .join(" or "),
                to.label()
            )));
        }
        let mut record = member.record.clone();
        record.state = to;
        record.since = unix_now();
        if write_if_unchanged(client, &member, &record).await? {
            return Ok(record);
        }
    }
    Err(StoreError::Conflict(format!(
        "cluster {name} kept changing under this command; run it again"
    )))
}

async fn write_if_unchanged(
    client: &mut Client,
    member: &Member,
    record: &MemberRecord,
) -> Result<bool, StoreError> {
    let key = keys::member(&member.name);
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            member.mod_revision,
        )])
        .and_then([TxnOp::put(key, record.encode(), None)]);
    Ok(client
        .txn(txn)
        .await
        .map_err(|error| admin_error("changing a member", error))?
        .succeeded())
}

/// How far a drain is: connections other clusters' nodes still have to
/// the member's backends, and the nodes that have not counted since the
/// drain began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    pub connections: u64,
    /// Nodes (`cluster/node`) with connections, or no count since the
    /// drain began.
    pub waiting_for: Vec<String>,
}

impl Drain {
    pub fn done(&self) -> bool {
        self.connections == 0 && self.waiting_for.is_empty()
    }
}

/// Reads every other cluster's reports: their counts of live connections
/// to `name`'s backends, counted at or after `since` (unix seconds).
pub async fn drain(client: &mut Client, name: &str, since: f64) -> Result<Drain, StoreError> {
    let response = client
        .get(fleet_keys::reports(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|error| admin_error("reading the agents' reports", error))?;
    let mut drain = Drain::default();
    for kv in response.kvs() {
        let Some((cluster, node)) = fleet_keys::parse_report(&String::from_utf8_lossy(kv.key()))
        else {
            continue;
        };
        if cluster == name {
            continue;
        }
        let Ok(report) = crate::model::decode::<Report>(kv.value()) else {
            continue;
        };
        let connections = report.connections_to.get(name).copied().unwrap_or(0);
        drain.connections += connections;
        if connections > 0 || report.connections_counted < since {
            drain.waiting_for.push(format!("{cluster}/{node}"));
        }
    }
    Ok(drain)
}

/// What a retirement deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    pub keys: i64,
    pub user: bool,
}

/// Deletes everything of retired member `name`: its etcd user and role
/// first (nothing of it can write again), its id claims, and every key it
/// had. The member record stays, retired, so a later join of the name
/// makes a user of a new generation. Safe to run again.
pub async fn remove(client: &mut Client, name: &str) -> Result<Deleted, StoreError> {
    let record = read_member(client, name).await?.record;
    if record.state != MemberState::Retired {
        return Err(StoreError::Conflict(format!(
            "cluster {name} is {}, not retired; retire it first",
            record.state.label()
        )));
    }
    let what = "deleting a retired cluster's keys";
    let user = member_user(name, record.generation);
    let mut deleted = Deleted::default();
    // The user first: from now on, nothing of the cluster can write again.
    match client.user_delete(&user).await {
        Ok(_) => deleted.user = true,
        Err(error) if error.to_string().contains("not found") => {}
        Err(error) => return Err(admin_error(what, error)),
    }
    match client.role_delete(&user).await {
        Ok(_) => {}
        Err(error) if error.to_string().contains("not found") => {}
        Err(error) => return Err(admin_error(what, error)),
    }
    // Its id claims (the member's and the registration's), each only if
    // it is this cluster's.
    for id_key in [keys::member_id(record.id), keys::cluster_id(record.id)] {
        let claim = Txn::new()
            .when([Compare::value(id_key.clone(), CompareOp::Equal, name)])
            .and_then([TxnOp::delete(id_key, None)]);
        let response = client
            .txn(claim)
            .await
            .map_err(|error| admin_error(what, error))?;
        deleted.keys += i64::from(response.succeeded());
    }
    for prefix in owned_prefixes(name) {
        let response = client
            .delete(prefix, Some(DeleteOptions::new().with_prefix()))
            .await
            .map_err(|error| admin_error(what, error))?;
        deleted.keys += response.deleted();
    }
    for key in owned_keys(name) {
        let response = client
            .delete(key, None)
            .await
            .map_err(|error| admin_error(what, error))?;
        deleted.keys += response.deleted();
    }
    Ok(deleted)
}

/// Every prefix under which only cluster `name` writes, with the trailing
/// `/` that keeps `c1` from matching `c10`.
fn owned_prefixes(name: &str) -> Vec<String> {
    vec![
        format!("{}nodes/{name}/", keys::PREFIX),
        keys::endpoints_of(name),
        keys::exported_identities_of(name),
        keys::local_of(name),
        keys::backends_of(name),
        fleet_keys::reports_of(name),
    ]
}

/// The single keys of cluster `name` (its id claims aside).
fn owned_keys(name: &str) -> [String; 3] {
    [
        keys::cluster(name),
        keys::leader(name),
        fleet_keys::target(name),
    ]
}
