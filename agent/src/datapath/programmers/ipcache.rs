//! Programs the ipcache map from three layers: entries the local source
//! decides (this node's pod CIDR and pods) over entries the mesh decides
//! (everything other nodes published) over the prefixes of policies'
//! ipBlocks, each with its own node-local identity. Each change writes only the keys it
//! touches. Entries found in reused pinned maps are kept until both layers
//! are complete, so a restarting agent keeps forwarding meanwhile; then
//! whatever neither layer wants is removed.
//!
//! A full map loses nothing: entries that do not fit wait and are written
//! as others leave; the first failure of an episode says which setting to
//! raise, and each failed write is counted.

use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::IpcacheEntry;
use ipnet::Ipv4Net;
use tracing::{error, info};

use crate::{datapath::DatapathMaps, mesh::state::IpcacheChange, metrics::Metrics};

pub struct IpcacheProgrammer {
    local: BTreeMap<Ipv4Net, IpcacheEntry>,
    mesh: BTreeMap<Ipv4Net, IpcacheEntry>,
    cidrs: BTreeMap<Ipv4Net, IpcacheEntry>,
    programmed: BTreeMap<Ipv4Net, IpcacheEntry>,
    /// Keys whose last write failed (the map was full), retried when an
    /// entry leaves.
    waiting: BTreeSet<Ipv4Net>,
    pruned: bool,
}

impl IpcacheProgrammer {
    /// Starts from what the map holds now.
    pub fn new(existing: BTreeMap<Ipv4Net, IpcacheEntry>) -> Self {
        Self {
            local: BTreeMap::new(),
            mesh: BTreeMap::new(),
            cidrs: BTreeMap::new(),
            programmed: existing,
            waiting: BTreeSet::new(),
            pruned: false,
        }
    }

    pub fn set_local(
        &mut self,
        local: BTreeMap<Ipv4Net, IpcacheEntry>,
        maps: &mut DatapathMaps,
        metrics: &Metrics,
    ) {
        let old = std::mem::replace(&mut self.local, local);
        for key in changed_keys(&old, &self.local) {
            self.write(key, maps, metrics);
        }
    }

    pub fn set_cidrs(
        &mut self,
        cidrs: BTreeMap<Ipv4Net, IpcacheEntry>,
        maps: &mut DatapathMaps,
        metrics: &Metrics,
    ) {
        let old = std::mem::replace(&mut self.cidrs, cidrs);
        for key in changed_keys(&old, &self.cidrs) {
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

    /// Entries in the map.
    pub fn entries(&self) -> usize {
        self.programmed.len()
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
        self.local
            .get(key)
            .or_else(|| self.mesh.get(key))
            .or_else(|| self.cidrs.get(key))
            .copied()
    }

    fn write(&mut self, key: Ipv4Net, maps: &mut DatapathMaps, metrics: &Metrics) {
        let wanted = self.wanted(&key);
        if wanted == self.programmed.get(&key).copied() {
            self.waiting.remove(&key);
            return;
        }
        // Only layer changes and pruning write, so an entry of a previous
        // run stays until a layer claims it or pruning removes it.
        let result = match wanted {
            Some(entry) => maps.upsert_ipcache(key, entry),
            None => maps.remove_ipcache(key),
        };
        match result {
            Ok(()) => {
                self.waiting.remove(&key);
                match wanted {
                    Some(entry) => {
                        self.programmed.insert(key, entry);
                    }
                    None => {
                        self.programmed.remove(&key);
                        self.retry_waiting(maps, metrics);
                    }
                }
            }
            Err(error) => {
                let first = self.waiting.is_empty();
                self.waiting.insert(key);
                if !error.is_full() {
                    error!(%key, "cannot update the ipcache: {error}");
                } else if first {
                    error!(
                        "the ipcache map is full ({} entries): {key} and what follows wait \
                         until entries leave; raise bpf.ipcache-max-entries",
                        self.programmed.len()
                    );
                }
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

impl IpcacheProgrammer {
    /// After an entry left: writes waiting keys until one does not fit.
    fn retry_waiting(&mut self, maps: &mut DatapathMaps, metrics: &Metrics) {
        while let Some(key) = self.waiting.first().copied() {
            self.write(key, maps, metrics);
            if self.waiting.contains(&key) {
                return;
            }
            if self.waiting.is_empty() {
                info!("the ipcache map has room again: every entry is programmed");
            }
        }
    }
}

/// Keys whose entry differs between two versions of a layer.
fn changed_keys(
    old: &BTreeMap<Ipv4Net, IpcacheEntry>,
    new: &BTreeMap<Ipv4Net, IpcacheEntry>,
) -> Vec<Ipv4Net> {
    let removed = old.keys().filter(|k| !new.contains_key(k));
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, _)| k);
    removed.chain(changed).copied().collect()
}
