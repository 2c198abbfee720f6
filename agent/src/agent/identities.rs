//! The identities of this node's pods: a cache of label set -> id, filled
//! by allocation tasks against etcd. A failed allocation is retried after a
//! pause; an id whose master record disappears is forgotten and allocated
//! again.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use etcd_client::Client;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use fleetnet_policy::identity::Labels;

use crate::mesh::identity;

/// A failed allocation is tried again after this, doubling up to
/// [`RETRY_MAX`] while it keeps failing.
const RETRY_AFTER: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) type Resolution = (Labels, Result<u32, String>);

#[derive(Default)]
pub(super) struct PodIdentities {
    known: BTreeMap<Labels, u32>,
    in_flight: BTreeSet<Labels>,
    /// Label sets whose allocation failed: when to try again, and the
    /// wait after that.
    retry_after: BTreeMap<Labels, (Instant, Duration)>,
}

impl PodIdentities {
    pub(super) fn get(&self, labels: &Labels) -> Option<u32> {
        self.known.get(labels).copied()
    }

    /// Starts an allocation for every label set not known or being allocated.
    pub(super) fn request<'a>(
        &mut self,
        wanted: impl Iterator<Item = &'a Labels>,
        client: &Client,
        cluster: &str,
        cluster_id: u16,
        results: &mpsc::Sender<Resolution>,
    ) {
        let now = Instant::now();
        for labels in wanted {
            if self.known.contains_key(labels)
                || self.in_flight.contains(labels)
                || self
                    .retry_after
                    .get(labels)
                    .is_some_and(|(at, _)| *at > now)
            {
                continue;
            }
            self.in_flight.insert(labels.clone());
            let (mut client, cluster, labels, results) = (
                client.clone(),
                cluster.to_string(),
                labels.clone(),
                results.clone(),
            );
            tokio::spawn(async move {
                let result = identity::allocate(&mut client, &cluster, cluster_id, &labels)
                    .await
                    .map_err(|error| error.to_string());
                let _ = results.send((labels, result)).await;
            });
        }
    }

    pub(super) fn resolved(&mut self, (labels, result): Resolution) {
        self.in_flight.remove(&labels);
        match result {
            Ok(id) => {
                self.retry_after.remove(&labels);
                self.known.insert(labels, id);
            }
            Err(error) => {
                // One warning per label set while its allocation fails.
                let wait = match self.retry_after.get(&labels) {
                    Some((_, wait)) => {
                        debug!("cannot allocate an identity yet ({error}); retrying in {wait:?}");
                        *wait
                    }
                    None => {
                        warn!(
                            "cannot allocate an identity ({error}); retrying in {RETRY_AFTER:?}, \
                             backing off up to {RETRY_MAX:?}"
                        );
                        RETRY_AFTER
                    }
                };
                let next = (wait * 2).min(RETRY_MAX);
                self.retry_after
                    .insert(labels, (Instant::now() + wait, next));
            }
        }
    }

    /// etcd answers again: failed allocations are tried at once, not
    /// after their backoff.
    pub(super) fn retry_now(&mut self) {
        let now = Instant::now();
        for (at, next) in self.retry_after.values_mut() {
            *at = now;
            *next = RETRY_AFTER;
        }
    }

    /// The id's master record is gone: allocate its labels again.
    pub(super) fn forget(&mut self, id: u32) -> bool {
        let before = self.known.len();
        self.known.retain(|_, known| *known != id);
        before != self.known.len()
    }

    /// Ids held in the cache.
    pub(super) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.known.values().copied()
    }

    /// Drops label sets no local pod uses any more.
    pub(super) fn keep_only(&mut self, used: &BTreeSet<&Labels>) {
        self.known.retain(|labels, _| used.contains(labels));
        self.retry_after.retain(|labels, _| used.contains(labels));
    }

    /// No allocation is under way.
    pub(super) fn settled(&self) -> bool {
        self.in_flight.is_empty()
    }
}
