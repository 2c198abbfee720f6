//! Programs the ipcache map from two layers: entries the local source
//! decides (this node's pod CIDR and pods) over entries the mesh decides
//! (everything other nodes published). Each change writes only the keys it
//! touches. Entries found in reused pinned maps are kept until both layers
//! are complete, so a restarting agent keeps forwarding meanwhile; then
//! whatever neither layer wants is removed.

use std::collections::BTreeMap;

use dataplane_common::IpcacheEntry;
use ipnet::Ipv4Net;
use tracing::error;

use crate::{datapath::DatapathMaps, mesh::state::IpcacheChange, metrics::Metrics};

pub struct IpcacheProgrammer {
    local: BTreeMap<Ipv4Net, IpcacheEntry>,
    mesh: BTreeMap<Ipv4Net, IpcacheEntry>,
    programmed: BTreeMap<Ipv4Net, IpcacheEntry>,
    pruned: bool,
}

impl IpcacheProgrammer {
    /// Starts from what the map holds now.
    pub fn new(existing: BTreeMap<Ipv4Net, IpcacheEntry>) -> Self {
        Self {
            local: BTreeMap::new(),
            mesh: BTreeMap::new(),
            programmed: existing,
            pruned: false,
        }
    }

    pub fn set_local(
        &mut self,
        local: BTreeMap<Ipv4Net, IpcacheEntry>,
        maps: &mut DatapathMaps,
        metrics: &Metrics,
    ) {
        let mut touched: Vec<Ipv4Net> = self
            .local
            .keys()
            .filter(|k| !local.contains_key(k))
            .copied()
            .collect();
        touched.extend(
            local
                .iter()
                .filter(|(k, v)| self.local.get(k) != Some(v))
                .map(|(k, _)| *k),
        );
        self.local = local;
        for key in touched {
            self.write(key, maps, metrics);
        }
    }

    pub fn apply_mesh(
        &mut self,
        changes: Vec<IpcacheChange>,
        maps: &mut DatapathMaps,
        metrics: &Metrics,
    ) {
        for change in changes {
            let key = match change {
                IpcacheChange::Upsert(key, entry) => {
                    self.mesh.insert(key, entry);
                    key
                }
                IpcacheChange::Remove(key) => {
                    self.mesh.remove(&key);
                    key
                }
            };
            self.write(key, maps, metrics);
        }
    }

    /// Once both layers are complete: removes every entry neither wants.
    pub fn prune(&mut self, maps: &mut DatapathMaps, metrics: &Metrics) {
        if self.pruned {
            return;
        }
        self.pruned = true;
        let stale: Vec<Ipv4Net> = self
            .programmed
            .keys()
            .filter(|key| self.wanted(key).is_none())
            .copied()
            .collect();
        for key in stale {
            self.write(key, maps, metrics);
        }
    }

    fn wanted(&self, key: &Ipv4Net) -> Option<IpcacheEntry> {
        self.local.get(key).or_else(|| self.mesh.get(key)).copied()
    }

    fn write(&mut self, key: Ipv4Net, maps: &mut DatapathMaps, metrics: &Metrics) {
        let wanted = self.wanted(&key);
        if wanted == self.programmed.get(&key).copied() {
            return;
        }
        // Only layer changes and pruning write, so an entry of a previous
        // run stays until a layer claims it or pruning removes it.
        let result = match wanted {
            Some(entry) => maps.upsert_ipcache(key, entry),
            None => maps.remove_ipcache(key),
        };
        match result {
            Ok(()) => match wanted {
                Some(entry) => {
                    self.programmed.insert(key, entry);
                }
                None => {
                    self.programmed.remove(&key);
                }
            },
            Err(error) => {
                error!(%key, "cannot update the ipcache: {error}");
                metrics
                    .map_write_errors
                    .get_or_create(&crate::metrics::MapLabel {
                        map: "ipcache".into(),
                    })
                    .inc();
            }
        }
    }
}
