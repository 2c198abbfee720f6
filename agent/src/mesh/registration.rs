//! Claiming a cluster's name and id, once, in one transaction. Agents of
//! the same cluster find their own claim and go on; a second cluster with
//! the same name or id is refused with a sentence saying which.

use std::collections::BTreeMap;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use ipnet::Ipv4Net;

use fleetnet_store::{
    EtcdError, keys,
    records::{ClusterRecord, MemberRecord, MemberState, Record, RoutingMode, VERSION},
};

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "cluster name {name} is already registered in the mesh with id {registered_id}, not {id}; \
         give this cluster another name or the id it was registered with"
    )]
    NameTaken {
        name: String,
        id: u16,
        registered_id: u16,
    },
    #[error(
        "cluster id {id} is already claimed by cluster {holder}; give cluster {name} an unused id"
    )]
    IdTaken {
        name: String,
        id: u16,
        holder: String,
    },
    #[error(
        "cluster {name} was retired from the fleet (fleetnet cluster retire) and is not \
         registered again; join it anew with fleetnet cluster join"
    )]
    Retired { name: String },
    #[error(
        "cluster {name} joined the fleet with id {joined_id}, not {id}; give the agents the \
         config fleetnet cluster join wrote"
    )]
    NotAsJoined {
        name: String,
        id: u16,
        joined_id: u16,
    },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl From<etcd_client::Error> for RegistrationError {
    fn from(error: etcd_client::Error) -> Self {
        Self::Etcd(error.into())
    }
}

/// Registers `name` with `id`, or confirms an earlier registration of the
/// same pair; keeps the record's pod CIDRs current.
pub async fn register(
    client: &mut Client,
    name: &str,
    id: u16,
    pod_cidrs: &[Ipv4Net],
) -> Result<(), RegistrationError> {
    let record = ClusterRecord {
        v: VERSION,
        id,
        pod_cidrs: pod_cidrs.to_vec(),
        labels: BTreeMap::new(),
        routing: RoutingMode::Tunnel,
        routing_peers: BTreeMap::new(),
    };
    register_record(client, name, &record).await
}

/// [`register`] with the whole record (labels, routing), kept current.
pub async fn register_record(
    client: &mut Client,
    name: &str,
    record: &ClusterRecord,
) -> Result<(), RegistrationError> {
    let id = record.id;
    // A member (joined with `fleetnet cluster join`) registers only as it
    // joined, and never once retired. Clusters set up by hand have no
    // member record.
    let member = client.get(keys::member(name), None).await?;
    if let Some(member) = member
        .kvs()
        .first()
        .and_then(|kv| MemberRecord::decode(kv.value()).ok())
    {
        if member.state == MemberState::Retired {
            return Err(RegistrationError::Retired { name: name.into() });
        }
        if member.id != id {
            return Err(RegistrationError::NotAsJoined {
                name: name.into(),
                id,
                joined_id: member.id,
            });
        }
    }
    let (cluster_key, id_key) = (keys::cluster(name), keys::cluster_id(id));
    let claim = Txn::new()
        .when([
            Compare::create_revision(cluster_key.clone(), CompareOp::Equal, 0),
            Compare::create_revision(id_key.clone(), CompareOp::Equal, 0),
        ])
        // The claim first: watchers see it before the record it validates.
        .and_then([
            TxnOp::put(id_key.clone(), name, None),
            TxnOp::put(cluster_key.clone(), record.encode(), None),
        ]);
    if client.txn(claim).await?.succeeded() {
        return Ok(());
    }
    // Someone registered before: this cluster (fine) or another (refused).
    let registered = client.get(cluster_key.clone(), None).await?;
    if let Some(kv) = registered.kvs().first() {
        let registered_id = ClusterRecord::decode(kv.value()).map(|r| r.id).unwrap_or(0);
        if registered_id != id {
            return Err(RegistrationError::NameTaken {
                name: name.into(),
                id,
                registered_id,
            });
        }
    }
    let holder = client.get(id_key.clone(), None).await?;
    if let Some(kv) = holder.kvs().first() {
        let holder = String::from_utf8_lossy(kv.value()).into_owned();
        if holder != name {
            return Err(RegistrationError::IdTaken {
                name: name.into(),
                id,
                holder,
            });
        }
    }
    // Our own registration: refresh the CIDRs while we hold the id claim,
    // or complete a registration whose claim is missing.
    let refresh = Txn::new()
        .when([Compare::value(id_key.clone(), CompareOp::Equal, name)])
        .and_then([TxnOp::put(cluster_key.clone(), record.encode(), None)]);
    if client.txn(refresh).await?.succeeded() {
        return Ok(());
    }
    let complete = Txn::new()
        .when([Compare::create_revision(
            id_key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(id_key.clone(), name, None),
            TxnOp::put(cluster_key, record.encode(), None),
        ]);
    if client.txn(complete).await?.succeeded() {
        return Ok(());
    }
    let holder = client.get(id_key, None).await?;
    let holder = holder
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default();
    Err(RegistrationError::IdTaken {
        name: name.into(),
        id,
        holder,
    })
}
