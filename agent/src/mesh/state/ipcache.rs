//! The desired ipcache: the entries the accepted clusters' nodes and
//! endpoints ask for, each owned by the record that produced it, and the
//! changes between two versions.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dataplane_common::{IpcacheEntry, identity};
use ipnet::Ipv4Net;
use tracing::warn;

use fleetnet_store::keys::{self};

use super::*;

impl MeshState {
    /// Recomputes every entry from the tables.
    pub(super) fn rebuild(&mut self) {
        self.desired.clear();
        self.node_cidrs.clear();
        let nodes: Vec<(String, String)> = self.nodes.keys().cloned().collect();
        for (cluster, node) in nodes {
            self.refresh_node(&cluster, &node);
        }
        let unplaced: Vec<Ipv4Addr> = self.endpoints.keys().copied().collect();
        for ip in unplaced {
            self.refresh_endpoint(ip);
        }
    }

    /// Recomputes the entries of one node: its pod CIDRs and its endpoints.
    pub(super) fn refresh_node(&mut self, cluster: &str, node: &str) -> Vec<IpcacheChange> {
        let owner = Owner::Node {
            cluster: cluster.into(),
            node: node.into(),
        };
        let id = (cluster.to_string(), node.to_string());
        let mut changes = Vec::new();
        let old = self.node_cidrs.remove(&id).unwrap_or_default();
        let new = self.node_entries(cluster, node);
        for cidr in old {
            let held = self.desired.get(&cidr).is_some_and(|(o, _)| *o == owner);
            if held && !new.iter().any(|(c, _)| *c == cidr) {
                self.desired.remove(&cidr);
                changes.push(IpcacheChange::Remove(cidr));
            }
        }
        let mut held = Vec::new();
        for (cidr, entry) in new {
            changes.extend(self.claim(cidr, owner.clone(), entry));
            if self.desired.get(&cidr).is_some_and(|(o, _)| *o == owner) {
                held.push(cidr);
            }
        }
        if !held.is_empty() {
            self.node_cidrs.insert(id, held);
        }
        let ips: Vec<Ipv4Addr> = self
            .endpoints_by_node
            .get(&(cluster.to_string(), node.to_string()))
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        for ip in ips {
            changes.extend(self.refresh_endpoint(ip));
        }
        changes
    }

    pub(super) fn refresh_endpoint(&mut self, ip: Ipv4Addr) -> Vec<IpcacheChange> {
        let cidr = Ipv4Net::from(ip);
        let owner = Owner::Endpoint(ip);
        let new = self.endpoint_entry(ip);
        let held_by_us = self.desired.get(&cidr).is_some_and(|(o, _)| *o == owner);
        match new {
            Some(entry) => self.claim(cidr, owner, entry).into_iter().collect(),
            None if held_by_us => {
                self.desired.remove(&cidr);
                vec![IpcacheChange::Remove(cidr)]
            }
            None => Vec::new(),
        }
    }

    fn claim(&mut self, cidr: Ipv4Net, owner: Owner, entry: IpcacheEntry) -> Option<IpcacheChange> {
        match self.desired.get(&cidr) {
            Some((holder, current)) if *holder == owner && *current == entry => None,
            Some((holder, _)) if *holder != owner => {
                warn!(%cidr, "two mesh records claim the same prefix; keeping the first");
                None
            }
            _ => {
                self.desired.insert(cidr, (owner, entry));
                Some(IpcacheChange::Upsert(cidr, entry))
            }
        }
    }

    fn is_own_node(&self, cluster: &str, node: &str) -> bool {
        cluster == self.viewpoint.cluster && node == self.viewpoint.node
    }

    fn node_entries(&mut self, cluster: &str, node: &str) -> Vec<(Ipv4Net, IpcacheEntry)> {
        if self.is_own_node(cluster, node) {
            return Vec::new();
        }
        let (Some(record), Some(owner)) = (
            self.nodes.get(&(cluster.into(), node.into())).cloned(),
            self.accepted.get(cluster).cloned(),
        ) else {
            return Vec::new();
        };
        if let Some(cidr) = record
            .pod_cidrs
            .iter()
            .find(|cidr| !inside(cidr, &owner.pod_cidrs))
        {
            let key = keys::node(cluster, node);
            self.reject(
                cluster,
                "node",
                &key,
                &format!("its pod CIDR {cidr} is outside cluster {cluster}'s pod CIDRs"),
            );
            return Vec::new();
        }
        let flags = self.route_flags(cluster);
        record
            .pod_cidrs
            .iter()
            .map(|cidr| {
                // A pod behind the CIDR that the mesh knows by no
                // endpoint of its own is one its cluster does not export.
                let entry = IpcacheEntry {
                    identity: identity::cluster_pods(owner.id),
                    tunnel_endpoint: record.ip.octets(),
                    cluster_id: owner.id,
                    flags,
                };
                (*cidr, entry)
            })
            .collect()
    }

    fn endpoint_entry(&mut self, ip: Ipv4Addr) -> Option<IpcacheEntry> {
        let (cluster, record) = self.endpoints.get(&ip).cloned()?;
        if self.is_own_node(&cluster, &record.node) {
            return None;
        }
        let owner = self.accepted.get(&cluster).cloned()?;
        let key = keys::endpoint(&cluster, ip);
        if !owner.pod_cidrs.iter().any(|cidr| cidr.contains(&ip)) {
            self.reject(
                &cluster,
                "endpoint",
                &key,
                &format!("{ip} is outside cluster {cluster}'s pod CIDRs"),
            );
            return None;
        }
        if identity::cluster_of(record.identity) != owner.id {
            self.reject(
                &cluster,
                "endpoint",
                &key,
                &format!(
                    "identity {} is outside cluster {cluster}'s range",
                    record.identity
                ),
            );
            return None;
        }
        // The node is needed to know where to tunnel; until it is known the
        // endpoint waits (the node's arrival refreshes it).
        let node = self.nodes.get(&(cluster.clone(), record.node.clone()))?;
        if !node.pod_cidrs.iter().any(|cidr| cidr.contains(&ip)) {
            self.reject(
                &cluster,
                "endpoint",
                &key,
                &format!("{ip} is outside node {}'s pod CIDRs", record.node),
            );
            return None;
        }
        Some(IpcacheEntry {
            identity: record.identity,
            tunnel_endpoint: node.ip.octets(),
            cluster_id: owner.id,
            flags: self.route_flags(&cluster),
        })
    }

    /// [`IpcacheEntry::NATIVE`] for a cluster reached natively.
    fn route_flags(&self, cluster: &str) -> u16 {
        if self.route(cluster).is_native() {
            IpcacheEntry::NATIVE
        } else {
            0
        }
    }
}

fn inside(cidr: &Ipv4Net, within: &[Ipv4Net]) -> bool {
    within.iter().any(|outer| outer.contains(cidr))
}

/// Changes that turn `before` into `after`.
pub fn diff(
    before: &BTreeMap<Ipv4Net, IpcacheEntry>,
    after: &BTreeMap<Ipv4Net, IpcacheEntry>,
) -> Vec<IpcacheChange> {
    let mut changes: Vec<IpcacheChange> = before
        .keys()
        .filter(|cidr| !after.contains_key(cidr))
        .map(|cidr| IpcacheChange::Remove(*cidr))
        .collect();
    changes.extend(
        after
            .iter()
            .filter(|(cidr, entry)| before.get(cidr) != Some(entry))
            .map(|(cidr, entry)| IpcacheChange::Upsert(*cidr, *entry)),
    );
    changes
}
