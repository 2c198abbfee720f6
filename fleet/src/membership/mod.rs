//! Cluster lifecycle, with the shared etcd as its only state: a cluster
//! joins (its name, id and CIDRs claimed, its etcd user and credentials
//! made, an overlay written), may be cordoned (other clusters choose its
//! backends for no new connection), and retires (drained, every key and
//! its user deleted, its name and id free again). Run by the fleet's
//! admin, etcd's root: no cluster role and not the controller's may write
//! membership or read the fleet's CA.

pub mod ca;
pub mod join;
pub mod observe;
pub mod overlay;
pub mod retire;
pub mod view;

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use ipnet::Ipv4Net;

use fleetnet_store::{
    EtcdError, fleet_keys, keys, list,
    records::{ClusterRecord, MemberRecord, MemberState, Record},
};

use self::ca::FleetCa;
use crate::{model, store::StoreError};

/// A member as read, with the revision it was last written at.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub record: MemberRecord,
    pub mod_revision: i64,
}

impl Member {
    /// Not retired: it holds its name, id and CIDRs.
    pub fn live(&self) -> bool {
        self.record.state != MemberState::Retired
    }
}

/// Every name, id and CIDR the mesh knows: members, and clusters that
/// registered without joining (configured by hand).
#[derive(Debug, Default)]
pub struct Fleet {
    pub members: BTreeMap<String, Member>,
    /// Cluster records of clusters that are not (live) members.
    pub registered: BTreeMap<String, ClusterRecord>,
    /// Cluster id claims of registered clusters: id to name.
    pub id_claims: BTreeMap<u16, String>,
}

impl Fleet {
    /// Ids in use, by whom. A retired member holds none.
    pub fn ids_taken(&self) -> BTreeMap<u16, String> {
        let mut taken = self.id_claims.clone();
        for member in self.live_members() {
            taken.insert(member.record.id, member.name.clone());
        }
        for (name, record) in &self.registered {
            taken.insert(record.id, name.clone());
        }
        taken
    }

    /// Pod CIDRs in use, by cluster.
    pub fn cidrs_taken(&self) -> BTreeMap<String, Vec<Ipv4Net>> {
        let mut taken: BTreeMap<String, Vec<Ipv4Net>> = self
            .registered
            .iter()
            .map(|(name, record)| (name.clone(), record.pod_cidrs.clone()))
            .collect();
        for member in self.live_members() {
            taken.insert(member.name.clone(), member.record.pod_cidrs.clone());
        }
        taken
    }

    fn live_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|member| member.live())
    }
}

/// Reads every member and registered cluster.
pub async fn read_fleet(client: &mut Client) -> Result<Fleet, StoreError> {
    let read = |error: EtcdError| admin_error_from("reading the fleet's members", error);
    let mut fleet = Fleet::default();
    let (members, _) = list(client, &keys::members()).await.map_err(read)?;
    for stored in members {
        let Some(keys::Key::Member { name }) = keys::parse(&stored.key) else {
            continue;
        };
        let record = MemberRecord::decode(&stored.value).map_err(|error| {
            StoreError::Invalid(format!("member {name} in etcd is unreadable: {error}"))
        })?;
        fleet.members.insert(
            name.clone(),
            Member {
                name,
                record,
                mod_revision: stored.mod_revision,
            },
        );
    }
    let (clusters, _) = list(client, &format!("{}clusters/", keys::PREFIX))
        .await
        .map_err(read)?;
    for stored in clusters {
        if let (Some(keys::Key::Cluster { name }), Ok(record)) = (
            keys::parse(&stored.key),
            ClusterRecord::decode(&stored.value),
        ) && !fleet.members.get(&name).is_some_and(Member::live)
        {
            fleet.registered.insert(name, record);
        }
    }
    let (claims, _) = list(client, &format!("{}cluster-ids/", keys::PREFIX))
        .await
        .map_err(read)?;
    for stored in claims {
        if let Some(keys::Key::ClusterId { id }) = keys::parse(&stored.key) {
            fleet
                .id_claims
                .insert(id, String::from_utf8_lossy(&stored.value).into_owned());
        }
    }
    Ok(fleet)
}

/// One member, or a sentence saying there is none of that name.
pub async fn read_member(client: &mut Client, name: &str) -> Result<Member, StoreError> {
    let response = client
        .get(keys::member(name), None)
        .await
        .map_err(|error| admin_error("reading a member", error))?;
    let kv = response.kvs().first().ok_or_else(|| {
        StoreError::NotFound(format!(
            "no cluster {name} has joined the fleet (fleetnet cluster list shows the members)"
        ))
    })?;
    let record = MemberRecord::decode(kv.value()).map_err(|error| {
        StoreError::Invalid(format!("member {name} in etcd is unreadable: {error}"))
    })?;
    Ok(Member {
        name: name.into(),
        record,
        mod_revision: kv.mod_revision(),
    })
}

/// The fleet's CA, if one was made.
pub async fn read_ca(client: &mut Client) -> Result<Option<FleetCa>, StoreError> {
    let response = client
        .get(fleet_keys::ca(), None)
        .await
        .map_err(|error| admin_error("reading the fleet's CA", error))?;
    response
        .kvs()
        .first()
        .map(|kv| {
            model::decode::<FleetCa>(kv.value()).map_err(|error| {
                StoreError::Invalid(format!("the fleet's CA in etcd is unreadable: {error}"))
            })
        })
        .transpose()
}

/// The fleet's CA: made and stored when there is none. True when made
/// now.
pub async fn init_ca(client: &mut Client) -> Result<(FleetCa, bool), StoreError> {
    if let Some(ca) = read_ca(client).await? {
        return Ok((ca, false));
    }
    let ca = FleetCa::generate().map_err(StoreError::Invalid)?;
    let key = fleet_keys::ca();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, model::encode(&ca), None)]);
    let made = client
        .txn(txn)
        .await
        .map_err(|error| admin_error("storing the fleet's CA", error))?
        .succeeded();
    if made {
        return Ok((ca, true));
    }
    // Another admin made one meanwhile: that one is the fleet's.
    let ca = read_ca(client)
        .await?
        .ok_or_else(|| StoreError::Conflict("the fleet's CA vanished while made".into()))?;
    Ok((ca, false))
}

/// An etcd error of an admin operation: a refusal for want of rights says
/// who may do it; anything else is etcd's own.
pub(crate) fn admin_error(what: &str, error: etcd_client::Error) -> StoreError {
    admin_error_from(what, error.into())
}

fn admin_error_from(what: &str, error: EtcdError) -> StoreError {
    let text = error.to_string();
    if text.contains("permission denied") || text.contains("user name is empty") {
        StoreError::Invalid(format!(
            "etcd refused {what}: it takes the fleet's admin (etcd's root user, \
             --etcd-user root), not a cluster's or the controller's user"
        ))
    } else {
        StoreError::Etcd(error)
    }
}
