//! `fleetnet cluster join`: check a new member against every cluster the
//! mesh knows, claim its name and id in one transaction, give it an etcd
//! user and role, and issue its credentials.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, Compare, CompareOp, Permission, Txn, TxnOp};
use ipnet::Ipv4Net;

use fleetnet_store::{
    keys,
    names::{check_dns_label, check_label},
    observe_names::agent_name,
    records::{MemberRecord, MemberState, Record, VERSION},
    roles::{cluster_role, member_user},
    time::unix_now,
};

use super::{Member, admin_error, ca::Issued, read_ca, read_fleet};
use crate::store::StoreError;

/// What the admin asked for.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub name: String,
    pub pod_cidrs: Vec<Ipv4Net>,
    /// The lowest free id when none is given.
    pub id: Option<u16>,
    pub labels: BTreeMap<String, String>,
    /// DNS names of the cluster's etcd grpc-proxy Service, for its
    /// serving certificate.
    pub proxy_names: Vec<String>,
}

/// What a member needs to reach etcd as itself.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The etcd user (and role), also the certificates' common name.
    pub user: String,
    pub password: String,
    /// The fleet CA's certificate.
    pub ca: String,
    /// The client certificate of the cluster's agents, whose common name
    /// is the user: what etcd with `--client-cert-auth` maps to the user
    /// when the agents reach it directly.
    pub client: Issued,
    /// The grpc-proxy's serving certificate.
    pub proxy: Issued,
    /// The grpc-proxy's client certificate towards the shared etcd, with no
    /// common name (grpc-proxy refuses one: every request through it would
    /// be that user's). Through the proxy, the agents are their user by
    /// logging in with the password.
    pub upstream: Issued,
    /// The serving certificate of the cluster's agents' observe listener
    /// (`observe.relay-listen`), which the relay checks by
    /// [`fleetnet_store::observe_names::agent_name`].
    pub observe: Issued,
}

#[derive(Debug, Clone)]
pub struct Joined {
    pub name: String,
    pub member: MemberRecord,
    pub credentials: Credentials,
    /// It had joined with these parameters before: its credentials were
    /// issued again (a new password and certificates).
    pub again: bool,
}

impl JoinRequest {
    /// Bad input, in one sentence, before etcd is asked anything.
    pub fn check(&self) -> Result<(), StoreError> {
        let invalid = StoreError::Invalid;
        check_dns_label("cluster name", &self.name).map_err(invalid)?;
        if self.pod_cidrs.is_empty() {
            return Err(invalid(
                "give the cluster's pod CIDRs with --pod-cidr".into(),
            ));
        }
        for cidr in &self.pod_cidrs {
            if cidr.addr() != cidr.network() {
                return Err(invalid(format!(
                    "pod CIDR {cidr} has host bits set; did you mean {}?",
                    cidr.trunc()
                )));
            }
        }
        for (i, a) in self.pod_cidrs.iter().enumerate() {
            if let Some(b) = self.pod_cidrs[i + 1..].iter().find(|b| overlap(a, b)) {
                return Err(invalid(format!("pod CIDRs {a} and {b} overlap")));
            }
        }
        if self.id == Some(0) {
            return Err(invalid("cluster id 0 is reserved; give 1..65535".into()));
        }
        for (key, value) in &self.labels {
            check_label("--labels", key, value).map_err(invalid)?;
        }
        Ok(())
    }
}

fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Joins `request` to the fleet, or refuses it in one sentence with
/// nothing written.
pub async fn join(client: &mut Client, request: &JoinRequest) -> Result<Joined, StoreError> {
    request.check()?;
    // Read first, as the admin: a user who may not read the CA may not
    // join, and learns it before anything is written.
    let ca = read_ca(client).await?;
    let fleet = read_fleet(client).await?;
    let existing = fleet
        .members
        .get(&request.name)
        .filter(|member| member.live());
    let (id, again) = match existing {
        Some(member) => (same_member(request, member)?, true),
        None => (check_new(request, &fleet)?, false),
    };
    let ca = match ca {
        Some(ca) => ca,
        None => super::init_ca(client).await?.0,
    };
    let member = match existing {
        Some(member) => member.record.clone(),
        None => {
            let tombstone = fleet.members.get(&request.name);
            let record = MemberRecord {
                v: VERSION,
                id,
                pod_cidrs: request.pod_cidrs.clone(),
                labels: request.labels.clone(),
                state: MemberState::Joined,
                generation: tombstone.map_or(0, |member| member.record.generation) + 1,
                since: unix_now(),
            };
            claim(client, &request.name, &record, tombstone).await?;
            record
        }
    };
    let user = member_user(&request.name, member.generation);
    let password = generate_password()?;
    grant(client, &request.name, &member, &user, &password).await?;
    let client_cert = ca.issue(&user, &[]).map_err(StoreError::Invalid)?;
    let proxy = ca
        .issue("fleetnet-etcd-proxy", &request.proxy_names)
        .map_err(StoreError::Invalid)?;
    let upstream = ca.issue("", &[]).map_err(StoreError::Invalid)?;
    // No common name: etcd with `--client-cert-auth` trusts the same CA
    // and would log a certificate in as the user its common name names.
    let observe = ca
        .issue("", &[agent_name(&request.name)])
        .map_err(StoreError::Invalid)?;
    Ok(Joined {
        name: request.name.clone(),
        member,
        credentials: Credentials {
            user,
            password,
            ca: ca.cert,
            client: client_cert,
            proxy,
            upstream,
            observe,
        },
        again,
    })
}

/// Joining again: the same CIDRs and labels, and the same id if one is
/// given; anything else is refused.
fn same_member(request: &JoinRequest, member: &Member) -> Result<u16, StoreError> {
    let record = &member.record;
    let cidrs = |list: &[Ipv4Net]| list.iter().copied().collect::<BTreeSet<_>>();
    if request.id.is_some_and(|id| id != record.id)
        || cidrs(&request.pod_cidrs) != cidrs(&record.pod_cidrs)
        || request.labels != record.labels
    {
        return Err(StoreError::Conflict(format!(
            "cluster {} has already joined with id {}, pod CIDRs {} and labels {}; join it with \
             exactly those to issue its overlay again, or retire it first",
            member.name,
            record.id,
            list(&record.pod_cidrs),
            labels(&record.labels),
        )));
    }
    Ok(record.id)
}

/// A new member: its name, id and CIDRs free among the members and the
/// clusters registered without joining. Returns its id.
fn check_new(request: &JoinRequest, fleet: &super::Fleet) -> Result<u16, StoreError> {
    let conflict = StoreError::Conflict;
    if let Some(record) = fleet.registered.get(&request.name) {
        return Err(conflict(format!(
            "cluster name {} is taken: a cluster of that name is registered in the mesh with id \
             {}; choose another name",
            request.name, record.id
        )));
    }
    let taken = fleet.ids_taken();
    let id = match request.id {
        Some(id) => {
            if let Some(holder) = taken.get(&id) {
                return Err(conflict(format!(
                    "cluster id {id} is taken by cluster {holder}; choose another id or leave \
                     --id out for the lowest free one"
                )));
            }
            id
        }
        None => (1..=u16::MAX)
            .find(|id| !taken.contains_key(id))
            .ok_or_else(|| conflict("every cluster id 1..65535 is taken".into()))?,
    };
    for (holder, cidrs) in fleet.cidrs_taken() {
        for cidr in &request.pod_cidrs {
            if let Some(other) = cidrs.iter().find(|other| overlap(cidr, other)) {
                return Err(conflict(format!(
                    "pod CIDR {cidr} overlaps cluster {holder}'s {other}; give the cluster pod \
                     CIDRs no other cluster uses"
                )));
            }
        }
    }
    Ok(id)
}

/// Claims the name and id in one transaction: the member record (new, or
/// over its retired tombstone as read) and the id claim, both unchanged
/// since they were read.
async fn claim(
    client: &mut Client,
    name: &str,
    record: &MemberRecord,
    tombstone: Option<&Member>,
) -> Result<(), StoreError> {
    let member_key = keys::member(name);
    let id_key = keys::member_id(record.id);
    let member_guard = match tombstone {
        Some(member) => {
            Compare::mod_revision(member_key.clone(), CompareOp::Equal, member.mod_revision)
        }
        None => Compare::create_revision(member_key.clone(), CompareOp::Equal, 0),
    };
    let txn = Txn::new()
        .when([
            member_guard,
            Compare::create_revision(id_key.clone(), CompareOp::Equal, 0),
            Compare::create_revision(keys::cluster_id(record.id), CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put(id_key, name, None),
            TxnOp::put(member_key, record.encode(), None),
        ]);
    let done = client
        .txn(txn)
        .await
        .map_err(|error| admin_error("joining a cluster", error))?;
    if done.succeeded() {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "cluster {name} or id {} was claimed by someone else meanwhile; run the join again",
            record.id
        )))
    }
}

/// The member's etcd role (exactly [`cluster_role`]) and user, made or
/// made again: every step may have been done by an interrupted join.
async fn grant(
    client: &mut Client,
    name: &str,
    member: &MemberRecord,
    user: &str,
    password: &str,
) -> Result<(), StoreError> {
    let what = "creating the cluster's etcd user";
    let exists = |error: &etcd_client::Error| error.to_string().contains("already exists");
    match client.role_add(user).await {
        Err(error) if !exists(&error) => return Err(admin_error(what, error)),
        _ => {}
    }
    for grant in cluster_role(name, member.id) {
        let permission = if grant.write {
            Permission::read_write(grant.key)
        } else {
            Permission::read(grant.key)
        };
        let permission = if grant.prefix {
            permission.with_prefix()
        } else {
            permission
        };
        client
            .role_grant_permission(user, permission)
            .await
            .map_err(|error| admin_error(what, error))?;
    }
    match client.user_add(user, password, None).await {
        Err(error) if exists(&error) => {
            client
                .user_change_password(user, password)
                .await
                .map_err(|error| admin_error(what, error))?;
        }
        Err(error) => return Err(admin_error(what, error)),
        Ok(_) => {}
    }
    client
        .user_grant_role(user, user)
        .await
        .map_err(|error| admin_error(what, error))?;
    Ok(())
}

/// 32 random bytes, hex encoded.
fn generate_password() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| StoreError::Invalid(format!("no randomness for a password: {error}")))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

pub(super) fn list(cidrs: &[Ipv4Net]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "none".into();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}
