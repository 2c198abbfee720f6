//! The mesh as this agent follows it: the validated state of every
//! cluster's records, whether etcd has been listed yet, and the metrics
//! that describe it.

use std::collections::BTreeMap;

use fleetnet_store::{
    Update,
    keys::{self, Key},
};

use crate::{
    mesh::{
        state::{IpcacheChange, MeshState},
        watcher::MeshEvent,
    },
    metrics::{KindLabel, Metrics},
};

pub(super) struct MeshView {
    pub(super) state: MeshState,
    /// A complete listing arrived: what is not in it is gone.
    listed: bool,
    /// Invalid records already counted in the metric, by kind.
    invalid_seen: BTreeMap<&'static str, u64>,
}

/// What one mesh event means for the rest of the agent.
#[derive(Default)]
pub(super) struct Applied {
    /// ipcache entries to change.
    pub(super) changes: Vec<IpcacheChange>,
    /// etcd answers (a listing arrived): what waits to retry need not wait.
    pub(super) etcd_back: bool,
    /// Identities of this cluster whose master record is gone.
    pub(super) identities_gone: Vec<u32>,
}

impl MeshView {
    pub(super) fn new(state: MeshState) -> Self {
        Self {
            state,
            listed: false,
            invalid_seen: BTreeMap::new(),
        }
    }

    /// True once etcd has been listed.
    pub(super) fn listed(&self) -> bool {
        self.listed
    }

    /// Applies one event. `own_identities` are the ids this node's pods
    /// hold, checked against a listing.
    pub(super) fn apply(
        &mut self,
        event: MeshEvent,
        own_cluster: &str,
        own_identities: impl Iterator<Item = u32>,
        metrics: &Metrics,
    ) -> Applied {
        match event {
            MeshEvent::Listing(values) => {
                metrics.mesh_listings.inc();
                metrics.etcd_connected.set(1);
                self.listed = true;
                let changes = self.state.replace(values);
                let identities_gone = own_identities
                    .filter(|id| self.state.identity(*id).is_none())
                    .collect();
                Applied {
                    changes,
                    etcd_back: true,
                    identities_gone,
                }
            }
            MeshEvent::Update(update) => self.apply_updates(vec![update], own_cluster, metrics),
            MeshEvent::Disconnected => {
                metrics.etcd_connected.set(0);
                metrics.etcd_error("watch");
                Applied::default()
            }
        }
    }

    /// Applies a run of watched changes together (see
    /// [`MeshState::apply_all`]).
    pub(super) fn apply_updates(
        &mut self,
        updates: Vec<Update>,
        own_cluster: &str,
        metrics: &Metrics,
    ) -> Applied {
        metrics.mesh_updates.inc_by(updates.len() as u64);
        let identities_gone = updates
            .iter()
            .filter_map(|update| match update {
                Update::Delete { key } => match keys::parse(key) {
                    Some(Key::Identity { cluster, id }) if cluster == own_cluster => Some(id),
                    _ => None,
                },
                Update::Put(_) => None,
            })
            .collect();
        Applied {
            changes: self.state.apply_all(updates),
            etcd_back: false,
            identities_gone,
        }
    }

    /// The mesh's gauges and counters after a batch of events.
    pub(super) fn update_metrics(&mut self, metrics: &Metrics) {
        let state = &self.state;
        metrics
            .remote_clusters
            .set(state.accepted().count().saturating_sub(1) as i64);
        metrics.remote_endpoints.set(state.endpoint_count() as i64);
        metrics.remote_nodes.set(state.node_count() as i64);
        for (kind, count) in &state.counters.invalid {
            let seen = self.invalid_seen.entry(kind).or_default();
            metrics
                .invalid_records
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc_by(count - *seen);
            *seen = *count;
        }
        metrics.entries_rejected_up_to(&state.counters.rejected);
    }
}
