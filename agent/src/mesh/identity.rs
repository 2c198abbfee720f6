//! Numeric security identities, allocated from label sets in etcd.
//!
//! Per cluster, an identity is three kinds of key, all among the cluster's
//! local keys (`/fleetnet/local/v1/<cluster>/`, which no other cluster
//! reads):
//! - `identities/<id>`: the labels (the master record);
//! - `identity-index/<hash of labels>`: the id, so equal label sets on
//!   every node find the same id with one read;
//! - `identity-refs/<id>/<node>`: a node using the id, under that node's
//!   lease (written through the session).
//!
//! Other clusters learn only the identities of exported pods, from the
//! nodes running them ([`crate::mesh::publish`]).
//!
//! Allocation claims a free number with a compare-and-swap transaction on
//! both the master and index keys, so concurrent agents never hand out one
//! number twice nor two numbers for one label set. Numbers live in the
//! cluster's range (cluster id in the high 16 bits), so a cluster cannot
//! mint another's. The elected agent deletes identities no node has
//! referenced for a grace period, as Cilium's kvstore allocator does.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use dataplane_common::identity;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use fleetnet_policy::identity::{FIRST_INDEX, Labels};
use fleetnet_store::{
    EtcdError, Retry,
    keys::{self, Key},
    records::{IdentityRecord, Record, VERSION},
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::info;

use crate::mesh::session::SessionStatus;

const ATTEMPTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cluster {0} has no free identity left ({FIRST_INDEX}..=65535 are all in use)")]
    Exhausted(String),
    #[error("identity allocation kept conflicting with other agents after {ATTEMPTS} attempts")]
    Contended,
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl From<etcd_client::Error> for IdentityError {
    fn from(error: etcd_client::Error) -> Self {
        Self::Etcd(error.into())
    }
}

/// A stable, short name for a label set.
pub fn labels_hash(labels: &Labels) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in labels {
        hasher.update(key.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The id of `labels` in `cluster`, allocating one if none exists.
pub async fn allocate(
    client: &mut Client,
    cluster: &str,
    cluster_id: u16,
    labels: &Labels,
) -> Result<u32, IdentityError> {
    let hash = labels_hash(labels);
    let index_key = keys::identity_index(cluster, &hash);
    let record = IdentityRecord {
        v: VERSION,
        labels: labels.clone(),
    };
    for _ in 0..ATTEMPTS {
        let index = client.get(index_key.clone(), None).await?;
        if let Some(kv) = index.kvs().first() {
            let id: u32 = String::from_utf8_lossy(kv.value()).parse().unwrap_or(0);
            let master_key = keys::identity(cluster, id);
            let master = client.get(master_key.clone(), None).await?;
            match master.kvs().first() {
                Some(master)
                    if IdentityRecord::decode(master.value())
                        .is_ok_and(|r| r.labels == *labels) =>
                {
                    return Ok(id);
                }
                None if identity::cluster_of(id) == cluster_id => {
                    // The master was collected while its index survived:
                    // bring it back under the same number if still free.
                    let restore = Txn::new()
                        .when([
                            Compare::create_revision(master_key.clone(), CompareOp::Equal, 0),
                            Compare::mod_revision(
                                index_key.clone(),
                                CompareOp::Equal,
                                kv.mod_revision(),
                            ),
                        ])
                        .and_then([TxnOp::put(master_key, record.encode(), None)]);
                    if client.txn(restore).await?.succeeded() {
                        return Ok(id);
                    }
                }
                // The index points at another label set (left by a
                // collected identity) or outside the cluster: drop it.
                _ => {
                    let stale = Txn::new()
                        .when([Compare::mod_revision(
                            index_key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::delete(index_key.clone(), None)]);
                    client.txn(stale).await?;
                }
            }
            continue;
        }
        let used = used_ids(client, cluster).await?;
        let id = free_id(cluster_id, &hash, &used)
            .ok_or_else(|| IdentityError::Exhausted(cluster.into()))?;
        let master_key = keys::identity(cluster, id);
        let claim = Txn::new()
            .when([
                Compare::create_revision(index_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(master_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(master_key, record.encode(), None),
                TxnOp::put(index_key.clone(), id.to_string(), None),
            ]);
        if client.txn(claim).await?.succeeded() {
            info!(cluster, id, "allocated identity");
            return Ok(id);
        }
    }
    Err(IdentityError::Contended)
}

async fn used_ids(client: &mut Client, cluster: &str) -> Result<BTreeSet<u32>, IdentityError> {
    let prefix = keys::identities_of(cluster);
    let options = GetOptions::new().with_prefix().with_keys_only();
    let response = client.get(prefix, Some(options)).await?;
    Ok(response
        .kvs()
        .iter()
        .filter_map(|kv| match keys::parse(&String::from_utf8_lossy(kv.key())) {
            Some(Key::Identity { id, .. }) => Some(id),
            _ => None,
        })
        .collect())
}

/// A free number in the cluster's range. Probing starts at a point derived
/// from the labels, so agents allocating different label sets at once
/// rarely race for the same number.
fn free_id(cluster_id: u16, hash: &str, used: &BTreeSet<u32>) -> Option<u32> {
    let span = u32::from(u16::MAX - FIRST_INDEX) + 1;
    let start = u32::from_str_radix(&hash[..8], 16).unwrap_or(0) % span;
    (0..span)
        .map(|offset| {
            identity::make(
                cluster_id,
                (FIRST_INDEX as u32 + (start + offset) % span) as u16,
            )
        })
        .find(|id| !used.contains(id))
}

/// How often identities are checked for collection (by the elected agent).
fn gc_interval(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Collects `cluster`'s unreferenced identities after `grace`, in the
/// background, while this node holds the cluster's leader key (`status`).
pub fn spawn_collection(
    mut client: Client,
    cluster: String,
    grace: Duration,
    status: watch::Receiver<SessionStatus>,
) {
    tokio::spawn(async move {
        let mut collector = IdentityCollector::default();
        let mut retry = Retry::log_only("identity collection");
        loop {
            tokio::time::sleep(gc_interval(grace)).await;
            if !status.borrow().leader {
                continue;
            }
            match collector.collect(&mut client, &cluster, grace).await {
                Ok(_) => {
                    retry.succeeded();
                }
                Err(error) => {
                    retry.failed(&error);
                }
            }
        }
    });
}

/// Tracks identities nobody references, and deletes them after `grace`.
#[derive(Default)]
pub struct IdentityCollector {
    unused_since: BTreeMap<u32, (Instant, i64)>,
}

impl IdentityCollector {
    /// One pass over `cluster`'s identities; returns the ids deleted.
    pub async fn collect(
        &mut self,
        client: &mut Client,
        cluster: &str,
        grace: Duration,
    ) -> Result<Vec<u32>, IdentityError> {
        let (masters, _) = fleetnet_store::list(client, &keys::identities_of(cluster)).await?;
        let (refs, _) = fleetnet_store::list(client, &keys::identity_refs_of(cluster)).await?;
        let referenced: BTreeSet<u32> = refs
            .iter()
            .filter_map(|stored| match keys::parse(&stored.key) {
                Some(Key::IdentityRef { id, .. }) => Some(id),
                _ => None,
            })
            .collect();
        let mut present = BTreeSet::new();
        let mut deleted = Vec::new();
        let now = Instant::now();
        for stored in masters {
            let Some(Key::Identity { id, .. }) = keys::parse(&stored.key) else {
                continue;
            };
            present.insert(id);
            if referenced.contains(&id) {
                self.unused_since.remove(&id);
                continue;
            }
            let mod_revision = stored.mod_revision;
            let labels = IdentityRecord::decode(&stored.value).map(|r| r.labels).ok();
            let since = self.unused_since.entry(id).or_insert((now, mod_revision));
            if since.1 != mod_revision {
                *since = (now, mod_revision);
            }
            if now.duration_since(since.0) < grace {
                continue;
            }
            let mut delete = vec![TxnOp::delete(stored.key.clone(), None)];
            if let Some(labels) = labels {
                let index_key = keys::identity_index(cluster, &labels_hash(&labels));
                delete.push(TxnOp::delete(index_key, None));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    stored.key.clone(),
                    CompareOp::Equal,
                    mod_revision,
                )])
                .and_then(delete);
            if client.txn(txn).await?.succeeded() {
                info!(cluster, id, "released identity unused for {grace:?}");
                deleted.push(id);
            }
            self.unused_since.remove(&id);
        }
        self.unused_since.retain(|id, _| present.contains(id));
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_label_sets_hash_equal_and_different_ones_differ() {
        let a: Labels = [
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ]
        .into();
        let b: Labels = [
            ("tier".into(), "front".into()),
            ("app".into(), "web".into()),
        ]
        .into();
        let c: Labels = [("app".into(), "web".into())].into();
        assert_eq!(labels_hash(&a), labels_hash(&b));
        assert_ne!(labels_hash(&a), labels_hash(&c));
        assert_eq!(labels_hash(&a).len(), 32);
    }

    #[test]
    fn free_ids_stay_in_the_cluster_range_and_skip_used_ones() {
        let hash = "00000000";
        let first = free_id(7, hash, &BTreeSet::new()).unwrap();
        assert_eq!(first, identity::make(7, FIRST_INDEX));
        let used: BTreeSet<u32> = [first].into();
        assert_eq!(
            free_id(7, hash, &used),
            Some(identity::make(7, FIRST_INDEX + 1))
        );
        let all: BTreeSet<u32> = (FIRST_INDEX..=u16::MAX)
            .map(|i| identity::make(7, i))
            .collect();
        assert_eq!(free_id(7, hash, &all), None);
        let wrapped = free_id(7, "ffffffff", &BTreeSet::new()).unwrap();
        assert_eq!(identity::cluster_of(wrapped), 7);
        assert!(wrapped & 0xffff >= u32::from(FIRST_INDEX));
    }
}
