//! The mesh as this agent believes it: every record other agents
//! published, checked before use, and the ipcache entries that follow.
//!
//! Applying an update returns only the ipcache entries it changed, so the
//! maps are written incrementally. Records of this agent's own node are
//! skipped: the local source is their authority.
//!
//! What is checked, per cluster X (the cluster named in the key):
//! - X has a cluster record and holds the claim on its id;
//! - X's pod CIDRs overlap neither this cluster's nor those of a cluster
//!   registered earlier, or X is refused as a whole;
//! - a node of X has its pod CIDRs inside X's;
//! - an endpoint of X lies inside X's pod CIDRs, has an identity in X's
//!   range, and sits on a known node of X (until then it waits);
//! - an identity of X is numbered in X's range.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::SystemTime,
};

use dataplane_common::{IpcacheEntry, identity};
use ipnet::Ipv4Net;
use tracing::{info, warn};

use crate::policy::ports::IdentityPorts;

use super::{
    keys::{self, Key},
    records::{BackendRecord, ClusterRecord, EndpointRecord, IdentityRecord, NodeRecord, Record},
};

/// Who this agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalView {
    pub cluster: String,
    pub cluster_id: u16,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub node: String,
}

/// One stored key, as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was created (orders cluster registrations).
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Put(StoredValue),
    Delete { key: String },
}

/// A change to make to the ipcache map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcacheChange {
    Upsert(Ipv4Net, IpcacheEntry),
    Remove(Ipv4Net),
}

/// Which records produced an ipcache entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Node { cluster: String, node: String },
    Endpoint(Ipv4Addr),
}

#[derive(Debug, Default)]
pub struct Counters {
    /// Records skipped as undecodable (or of an unknown version), by kind.
    pub invalid: BTreeMap<&'static str, u64>,
    /// Records rejected for claiming what is not their cluster's (pod
    /// addresses outside its CIDRs, identities outside its range), by
    /// cluster and kind; each record once while it stays rejected.
    pub rejected: BTreeMap<(String, &'static str), u64>,
}

pub struct MeshState {
    local: LocalView,
    clusters: BTreeMap<String, (ClusterRecord, i64)>,
    id_claims: BTreeMap<u16, String>,
    accepted: BTreeMap<String, ClusterRecord>,
    refused: BTreeMap<String, String>,
    nodes: BTreeMap<(String, String), NodeRecord>,
    endpoints: BTreeMap<Ipv4Addr, (String, EndpointRecord)>,
    endpoints_by_node: BTreeMap<(String, String), BTreeSet<Ipv4Addr>>,
    identities: BTreeMap<u32, (String, IdentityRecord)>,
    /// Exported backends by (namespace, service).
    backends: BTreeMap<(String, String), BTreeMap<BackendId, BackendRecord>>,
    /// Backends or clusters changed since [`MeshState::take_services_changed`].
    services_changed: bool,
    /// Identities, endpoints or clusters changed since
    /// [`MeshState::take_peers_changed`].
    peers_changed: bool,
    desired: BTreeMap<Ipv4Net, (Owner, IpcacheEntry)>,
    /// When each cluster last changed a key.
    last_change: BTreeMap<String, SystemTime>,
    /// Keys rejected (and counted) so far, with the reason.
    rejected_keys: BTreeMap<String, String>,
    pub counters: Counters,
}

/// One cluster as this agent uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub id: u16,
    /// Nodes in use (this agent's own node is not counted).
    pub nodes: usize,
    /// Endpoints in use (on a known node of the cluster).
    pub endpoints: usize,
    /// Services it exports backends for.
    pub services: usize,
    pub last_change: Option<SystemTime>,
}

/// An exported backend: (cluster, port id, address, port).
type BackendId = (String, String, Ipv4Addr, u16);

/// A backend another cluster exports, checked against that cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteBackend {
    pub cluster: String,
    pub cluster_id: u16,
    pub port_id: String,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl MeshState {
    pub fn new(local: LocalView) -> Self {
        let mut state = Self {
            local,
            clusters: BTreeMap::new(),
            id_claims: BTreeMap::new(),
            accepted: BTreeMap::new(),
            refused: BTreeMap::new(),
            nodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            endpoints_by_node: BTreeMap::new(),
            identities: BTreeMap::new(),
            backends: BTreeMap::new(),
            services_changed: true,
            peers_changed: true,
            desired: BTreeMap::new(),
            last_change: BTreeMap::new(),
            rejected_keys: BTreeMap::new(),
            counters: Counters::default(),
        };
        state.decide_clusters();
        state
    }

    /// Clusters refused, with the reason.
    pub fn refused(&self) -> &BTreeMap<String, String> {
        &self.refused
    }

    /// Clusters whose records are used, this one included.
    pub fn accepted(&self) -> impl Iterator<Item = (&str, u16)> {
        self.accepted
            .iter()
            .map(|(name, record)| (name.as_str(), record.id))
    }

    pub fn identity(&self, id: u32) -> Option<&IdentityRecord> {
        self.identities.get(&id).map(|(_, record)| record)
    }

    /// Remote endpoints in use (validated and placed on a known node).
    pub fn endpoint_count(&self) -> usize {
        self.desired
            .values()
            .filter(|(owner, _)| matches!(owner, Owner::Endpoint(_)))
            .count()
    }

    /// True (once) when exported backends or the set of clusters changed.
    pub fn take_services_changed(&mut self) -> bool {
        std::mem::take(&mut self.services_changed)
    }

    /// True (once) when what policy peers are chosen from changed:
    /// identities, endpoints (their named ports) or the set of clusters.
    pub fn take_peers_changed(&mut self) -> bool {
        std::mem::take(&mut self.peers_changed)
    }

    /// Identities of accepted clusters: (id, owning cluster, labels).
    pub fn identities(&self) -> impl Iterator<Item = (u32, &str, &IdentityRecord)> {
        self.identities
            .iter()
            .filter(|(_, (cluster, _))| self.accepted.contains_key(cluster))
            .map(|(id, (cluster, record))| (*id, cluster.as_str(), record))
    }

    /// Named ports of other nodes' endpoints in accepted clusters, by
    /// identity: name to every (protocol, port) it stands for.
    pub fn named_ports(&self) -> BTreeMap<u32, IdentityPorts> {
        let mut out: BTreeMap<u32, IdentityPorts> = BTreeMap::new();
        for (cluster, record) in self.endpoints.values() {
            if record.ports.is_empty() || !self.accepted.contains_key(cluster) {
                continue;
            }
            let ports = out.entry(record.identity).or_default();
            for (name, port) in &record.ports {
                ports.entry(name.clone()).or_default().insert(*port);
            }
        }
        out
    }

    /// Backends of `namespace/service` that other accepted clusters export,
    /// each inside its cluster's pod CIDRs (others are skipped and counted
    /// once when stored).
    pub fn remote_backends(&self, namespace: &str, service: &str) -> Vec<RemoteBackend> {
        let Some(backends) = self
            .backends
            .get(&(namespace.to_string(), service.to_string()))
        else {
            return Vec::new();
        };
        backends
            .keys()
            .filter(|(cluster, ..)| *cluster != self.local.cluster)
            .filter_map(|(cluster, port_id, ip, port)| {
                let record = self.accepted.get(cluster)?;
                record
                    .pod_cidrs
                    .iter()
                    .any(|cidr| cidr.contains(ip))
                    .then(|| RemoteBackend {
                        cluster: cluster.clone(),
                        cluster_id: record.id,
                        port_id: port_id.clone(),
                        ip: *ip,
                        port: *port,
                    })
            })
            .collect()
    }

    /// Every accepted cluster, this one included.
    pub fn cluster_stats(&self) -> BTreeMap<String, ClusterStats> {
        let mut stats: BTreeMap<String, ClusterStats> = self
            .accepted
            .iter()
            .map(|(name, record)| {
                let stats = ClusterStats {
                    id: record.id,
                    last_change: self.last_change.get(name).copied(),
                    ..ClusterStats::default()
                };
                (name.clone(), stats)
            })
            .collect();
        let mut nodes = BTreeSet::new();
        for (owner, _) in self.desired.values() {
            match owner {
                Owner::Node { cluster, node } => {
                    nodes.insert((cluster, node));
                }
                Owner::Endpoint(ip) => {
                    if let Some(entry) = self
                        .endpoints
                        .get(ip)
                        .and_then(|(cluster, _)| stats.get_mut(cluster))
                    {
                        entry.endpoints += 1;
                    }
                }
            }
        }
        for (cluster, _) in nodes {
            if let Some(entry) = stats.get_mut(cluster) {
                entry.nodes += 1;
            }
        }
        for backends in self.backends.values() {
            let clusters: BTreeSet<&String> =
                backends.keys().map(|(cluster, ..)| cluster).collect();
            for cluster in clusters {
                if let Some(entry) = stats.get_mut(cluster) {
                    entry.services += 1;
                }
            }
        }
        stats
    }

    /// The endpoint another node published at `ip`: its cluster and record.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<(&str, &EndpointRecord)> {
        self.endpoints
            .get(&ip)
            .map(|(cluster, record)| (cluster.as_str(), record))
    }

    /// Nodes in use (validated, of an accepted cluster, not this one).
    pub fn node_count(&self) -> usize {
        self.desired
            .values()
            .filter_map(|(owner, _)| match owner {
                Owner::Node { cluster, node } => Some((cluster, node)),
                Owner::Endpoint(_) => None,
            })
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The ipcache entries the mesh asks for.
    pub fn ipcache(&self) -> BTreeMap<Ipv4Net, IpcacheEntry> {
        self.desired
            .iter()
            .map(|(cidr, (_, entry))| (*cidr, *entry))
            .collect()
    }

    /// Replaces everything with a fresh listing; returns the net changes.
    pub fn replace(&mut self, listing: Vec<StoredValue>) -> Vec<IpcacheChange> {
        let before = self.ipcache();
        self.clusters.clear();
        self.id_claims.clear();
        self.nodes.clear();
        self.endpoints.clear();
        self.endpoints_by_node.clear();
        self.identities.clear();
        self.backends.clear();
        self.services_changed = true;
        self.peers_changed = true;
        // A record rejected before the gap and still there is not counted
        // (nor logged) again; one that left may be, when it comes back.
        let listed: BTreeSet<String> = listing.iter().map(|stored| stored.key.clone()).collect();
        self.rejected_keys.retain(|key, _| listed.contains(key));
        for stored in listing {
            self.store(Update::Put(stored));
        }
        self.decide_clusters();
        self.rebuild();
        diff(&before, &self.ipcache())
    }

    /// Applies one watched change; returns the ipcache changes it causes.
    pub fn apply(&mut self, update: Update) -> Vec<IpcacheChange> {
        let key = match &update {
            Update::Put(stored) => &stored.key,
            Update::Delete { key } => key,
        };
        // A new value is judged (and counted) afresh.
        self.rejected_keys.remove(key);
        let Some(parsed) = self.store(update) else {
            return Vec::new();
        };
        match parsed {
            Key::Cluster { .. } | Key::ClusterId { .. } => {
                if self.decide_clusters() {
                    self.services_changed = true;
                    self.peers_changed = true;
                    let before = self.ipcache();
                    self.rebuild();
                    return diff(&before, &self.ipcache());
                }
                Vec::new()
            }
            Key::Node { cluster, node } => self.refresh_node(&cluster, &node),
            Key::Endpoint { ip, .. } => self.refresh_endpoint(ip),
            _ => Vec::new(),
        }
    }

    /// Records an update in the raw tables; returns its key if it matters.
    fn store(&mut self, update: Update) -> Option<Key> {
        let (key, value, create_revision) = match update {
            Update::Put(stored) => (stored.key, Some(stored.value), stored.create_revision),
            Update::Delete { key } => (key, None, 0),
        };
        let parsed = keys::parse(&key)?;
        if let Some(cluster) = parsed.cluster() {
            self.last_change
                .insert(cluster.to_string(), SystemTime::now());
        }
        match &parsed {
            Key::Cluster { name } => match value {
                Some(value) => match self.decode::<ClusterRecord>(&key, &value, "cluster") {
                    Some(record) => {
                        self.clusters
                            .insert(name.clone(), (record, create_revision));
                    }
                    None => {
                        self.clusters.remove(name);
                    }
                },
                None => {
                    self.clusters.remove(name);
                }
            },
            Key::ClusterId { id } => match value {
                Some(value) => {
                    self.id_claims
                        .insert(*id, String::from_utf8_lossy(&value).into_owned());
                }
                None => {
                    self.id_claims.remove(id);
                }
            },
            Key::Node { cluster, node } => {
                let id = (cluster.clone(), node.clone());
                if let Some(record) =
                    value.and_then(|v| self.decode::<NodeRecord>(&key, &v, "node"))
                {
                    self.nodes.insert(id, record);
                } else {
                    self.nodes.remove(&id);
                }
            }
            Key::Endpoint { cluster, ip } => {
                // Named ports are all policies read from endpoints.
                let named = |state: &Self| {
                    state
                        .endpoints
                        .get(ip)
                        .is_some_and(|(_, record)| !record.ports.is_empty())
                };
                self.peers_changed |= named(self);
                self.unindex_endpoint(*ip);
                if let Some(record) =
                    value.and_then(|v| self.decode::<EndpointRecord>(&key, &v, "endpoint"))
                {
                    self.endpoints_by_node
                        .entry((cluster.clone(), record.node.clone()))
                        .or_default()
                        .insert(*ip);
                    self.endpoints.insert(*ip, (cluster.clone(), record));
                }
                self.peers_changed |= named(self);
            }
            Key::Identity { cluster, id } => {
                self.peers_changed = true;
                self.identities.remove(id);
                if let Some(record) =
                    value.and_then(|v| self.decode::<IdentityRecord>(&key, &v, "identity"))
                {
                    if self
                        .cluster_id_of(cluster)
                        .is_some_and(|cid| identity::cluster_of(*id) == cid)
                    {
                        self.identities.insert(*id, (cluster.clone(), record));
                    } else if self.cluster_id_of(cluster).is_some() {
                        self.reject(
                            cluster,
                            "identity",
                            &key,
                            &format!("identity {id} is outside cluster {cluster}'s range"),
                        );
                    }
                }
            }
            Key::Backend {
                namespace,
                service,
                cluster,
                port_id,
                ip,
                port,
            } => {
                let id = (cluster.clone(), port_id.clone(), *ip, *port);
                let service_key = (namespace.clone(), service.clone());
                let entry = value.and_then(|v| self.decode::<BackendRecord>(&key, &v, "backend"));
                let backends = self.backends.entry(service_key.clone()).or_default();
                match entry {
                    Some(record) => {
                        backends.insert(id, record);
                    }
                    None => {
                        backends.remove(&id);
                    }
                }
                if backends.is_empty() {
                    self.backends.remove(&service_key);
                }
                let outside = self
                    .accepted
                    .get(cluster)
                    .is_some_and(|owner| !owner.pod_cidrs.iter().any(|cidr| cidr.contains(ip)));
                if outside {
                    self.reject(
                        cluster,
                        "backend",
                        &key,
                        &format!("{ip} is outside cluster {cluster}'s pod CIDRs"),
                    );
                }
                self.services_changed = true;
            }
            _ => return None,
        }
        Some(parsed)
    }

    fn decode<T: Record>(&mut self, key: &str, value: &[u8], kind: &'static str) -> Option<T> {
        match T::decode(value) {
            Ok(record) => Some(record),
            Err(error) => {
                self.invalid(kind, key, &error.to_string());
                None
            }
        }
    }

    fn invalid(&mut self, kind: &'static str, key: &str, reason: &str) {
        *self.counters.invalid.entry(kind).or_default() += 1;
        warn!(key, "ignoring {kind} record: {reason}");
    }

    /// A record of `cluster` that claims what belongs to another cluster
    /// (or lies outside its own node): not used; counted and logged once
    /// while it stays as it is.
    fn reject(&mut self, cluster: &str, kind: &'static str, key: &str, reason: &str) {
        if self
            .rejected_keys
            .get(key)
            .is_some_and(|known| known == reason)
        {
            return;
        }
        self.rejected_keys
            .insert(key.to_string(), reason.to_string());
        *self
            .counters
            .rejected
            .entry((cluster.to_string(), kind))
            .or_default() += 1;
        warn!(cluster, key, "rejecting {kind} record: {reason}");
    }

    fn unindex_endpoint(&mut self, ip: Ipv4Addr) {
        if let Some((cluster, record)) = self.endpoints.remove(&ip) {
            let node = (cluster, record.node);
            if let Some(set) = self.endpoints_by_node.get_mut(&node) {
                set.remove(&ip);
                if set.is_empty() {
                    self.endpoints_by_node.remove(&node);
                }
            }
        }
    }

    fn cluster_id_of(&self, cluster: &str) -> Option<u16> {
        if cluster == self.local.cluster {
            return Some(self.local.cluster_id);
        }
        self.clusters.get(cluster).map(|(record, _)| record.id)
    }

    /// Decides which clusters are used; true when that set changed.
    fn decide_clusters(&mut self) -> bool {
        let local = ClusterRecord {
            v: super::records::VERSION,
            id: self.local.cluster_id,
            pod_cidrs: self.local.pod_cidrs.clone(),
            labels: BTreeMap::new(),
        };
        let mut accepted = BTreeMap::from([(self.local.cluster.clone(), local)]);
        let mut refused = BTreeMap::new();
        let mut candidates: Vec<(&String, &(ClusterRecord, i64))> = self
            .clusters
            .iter()
            .filter(|(name, _)| **name != self.local.cluster)
            .collect();
        candidates.sort_by_key(|(name, (_, revision))| (*revision, (*name).clone()));
        for (name, (record, _)) in candidates {
            match self.decide(name, record, &accepted) {
                Decision::Accept => {
                    accepted.insert(name.clone(), record.clone());
                }
                Decision::Refuse(reason) => {
                    refused.insert(name.clone(), reason);
                }
                Decision::Wait => {}
            }
        }
        for (name, reason) in &refused {
            if self.refused.get(name) != Some(reason) {
                tracing::error!(cluster = %name, "refusing cluster: {reason}");
            }
        }
        for name in accepted.keys() {
            if !self.accepted.contains_key(name) && *name != self.local.cluster {
                info!(cluster = %name, "cluster joined the mesh");
            }
        }
        let changed = accepted != self.accepted;
        self.accepted = accepted;
        self.refused = refused;
        changed
    }

    fn decide(
        &self,
        name: &str,
        record: &ClusterRecord,
        accepted: &BTreeMap<String, ClusterRecord>,
    ) -> Decision {
        if record.id < identity::FIRST_CLUSTER_ID {
            return Decision::Refuse("its cluster id is 0".into());
        }
        match self.id_claims.get(&record.id) {
            Some(holder) if holder == name => {}
            Some(holder) => {
                return Decision::Refuse(format!(
                    "cluster id {} is claimed by cluster {holder}",
                    record.id
                ));
            }
            // Registration writes the claim and the record together; until
            // both are seen the cluster is not used, nor refused.
            None => return Decision::Wait,
        }
        for (other, other_record) in accepted {
            if other_record.id == record.id {
                return Decision::Refuse(format!(
                    "cluster id {} is already used by cluster {other}",
                    record.id
                ));
            }
            for cidr in &record.pod_cidrs {
                if let Some(theirs) = other_record
                    .pod_cidrs
                    .iter()
                    .find(|theirs| overlaps(cidr, theirs))
                {
                    return Decision::Refuse(format!(
                        "its pod CIDR {cidr} overlaps cluster {other}'s {theirs}; pod CIDRs must not overlap across the mesh"
                    ));
                }
            }
        }
        Decision::Accept
    }

    /// Recomputes every entry from the tables.
    fn rebuild(&mut self) {
        self.desired.clear();
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
    fn refresh_node(&mut self, cluster: &str, node: &str) -> Vec<IpcacheChange> {
        let owner = Owner::Node {
            cluster: cluster.into(),
            node: node.into(),
        };
        let mut changes = Vec::new();
        let old: Vec<Ipv4Net> = self
            .desired
            .iter()
            .filter(|(_, (o, _))| *o == owner)
            .map(|(cidr, _)| *cidr)
            .collect();
        let new = self.node_entries(cluster, node);
        for cidr in old {
            if !new.iter().any(|(c, _)| *c == cidr) {
                self.desired.remove(&cidr);
                changes.push(IpcacheChange::Remove(cidr));
            }
        }
        for (cidr, entry) in new {
            changes.extend(self.claim(cidr, owner.clone(), entry));
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

    fn refresh_endpoint(&mut self, ip: Ipv4Addr) -> Vec<IpcacheChange> {
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
        cluster == self.local.cluster && node == self.local.node
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
        record
            .pod_cidrs
            .iter()
            .map(|cidr| {
                let entry = IpcacheEntry {
                    identity: identity::UNMANAGED,
                    tunnel_endpoint: record.ip.octets(),
                    cluster_id: owner.id,
                    flags: 0,
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
            flags: 0,
        })
    }
}

enum Decision {
    Accept,
    Refuse(String),
    Wait,
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::records::VERSION;

    fn local() -> LocalView {
        LocalView {
            cluster: "c1".into(),
            cluster_id: 1,
            pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            node: "n1".into(),
        }
    }

    fn put(key: String, record: &impl Record, revision: i64) -> Update {
        Update::Put(StoredValue {
            key,
            value: record.encode(),
            create_revision: revision,
            mod_revision: revision,
        })
    }

    fn raw(key: String, value: &[u8], revision: i64) -> Update {
        Update::Put(StoredValue {
            key,
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
        })
    }

    fn stored(key: String, value: Vec<u8>, revision: i64) -> StoredValue {
        StoredValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
        }
    }

    /// Registers cluster `name` the way a real registration does.
    fn register(
        state: &mut MeshState,
        name: &str,
        id: u16,
        cidr: &str,
        revision: i64,
    ) -> Vec<IpcacheChange> {
        let record = ClusterRecord {
            v: VERSION,
            id,
            pod_cidrs: vec![cidr.parse().unwrap()],
            labels: BTreeMap::new(),
        };
        let mut changes = state.apply(raw(keys::cluster_id(id), name.as_bytes(), revision));
        changes.extend(state.apply(put(keys::cluster(name), &record, revision)));
        changes
    }

    fn node(ip: [u8; 4], cidr: &str) -> NodeRecord {
        NodeRecord {
            v: VERSION,
            ip: ip.into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
        }
    }

    fn endpoint(identity: u32, node: &str) -> EndpointRecord {
        EndpointRecord {
            v: VERSION,
            identity,
            node: node.into(),
            namespace: "default".into(),
            pod: "web".into(),
            ports: BTreeMap::new(),
        }
    }

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn cluster_stats_count_what_each_cluster_contributes() {
        let mut state = MeshState::new(local());
        register(&mut state, "c2", 2, "10.2.0.0/16", 10);
        register(&mut state, "c3", 3, "10.3.0.0/16", 11);
        for (n, ip) in [("n1", [198, 18, 2, 11]), ("n2", [198, 18, 2, 12])] {
            let cidr = format!("10.2.{}.0/24", ip[3] - 10);
            state.apply(put(keys::node("c2", n), &node(ip, &cidr), 12));
        }
        for host in [11, 12, 13] {
            let pod = Ipv4Addr::new(10, 2, 1, host);
            state.apply(put(
                keys::endpoint("c2", pod),
                &endpoint(identity::make(2, 300), "n1"),
                13,
            ));
        }
        // An endpoint on a node nobody published is not in use.
        state.apply(put(
            keys::endpoint("c2", Ipv4Addr::new(10, 2, 9, 11)),
            &endpoint(identity::make(2, 300), "n9"),
            14,
        ));
        let backend = BackendRecord {
            v: VERSION,
            node: "n1".into(),
        };
        for service in ["web", "db"] {
            let key = keys::backend(
                "shop",
                service,
                "c2",
                "http",
                Ipv4Addr::new(10, 2, 1, 11),
                80,
            );
            state.apply(put(key, &backend, 15));
        }

        let stats = state.cluster_stats();
        assert_eq!(stats.keys().collect::<Vec<_>>(), ["c1", "c2", "c3"]);
        let c2 = &stats["c2"];
        assert_eq!((c2.id, c2.nodes, c2.endpoints, c2.services), (2, 2, 3, 2));
        assert!(c2.last_change.is_some());
        let c3 = &stats["c3"];
        assert_eq!(
            (c3.nodes, c3.endpoints, c3.services),
            (0, 0, 0),
            "registered, no node: disconnected"
        );
        assert_eq!(
            state
                .endpoint(Ipv4Addr::new(10, 2, 1, 12))
                .map(|(cluster, record)| (cluster, record.identity)),
            Some(("c2", identity::make(2, 300)))
        );
    }

    #[test]
    fn a_remote_cluster_programs_its_nodes_and_endpoints() {
        let mut state = MeshState::new(local());
        assert!(register(&mut state, "c2", 2, "10.2.0.0/16", 10).is_empty());
        let changes = state.apply(put(
            keys::node("c2", "n1"),
            &node([198, 18, 2, 11], "10.2.1.0/24"),
            11,
        ));
        let expected = IpcacheEntry {
            identity: identity::UNMANAGED,
            tunnel_endpoint: [198, 18, 2, 11],
            cluster_id: 2,
            flags: 0,
        };
        assert_eq!(
            changes,
            vec![IpcacheChange::Upsert(net("10.2.1.0/24"), expected)]
        );

        let pod = Ipv4Addr::new(10, 2, 1, 11);
        let changes = state.apply(put(
            keys::endpoint("c2", pod),
            &endpoint(identity::make(2, 300), "n1"),
            12,
        ));
        let entry = IpcacheEntry {
            identity: identity::make(2, 300),
            ..expected
        };
        assert_eq!(
            changes,
            vec![IpcacheChange::Upsert(net("10.2.1.11/32"), entry)]
        );
        assert_eq!(state.endpoint_count(), 1);

        // Deleting the node takes its endpoints with it.
        let mut changes = state.apply(Update::Delete {
            key: keys::node("c2", "n1"),
        });
        changes.sort_by_key(|change| format!("{change:?}"));
        assert_eq!(
            changes,
            vec![
                IpcacheChange::Remove(net("10.2.1.0/24")),
                IpcacheChange::Remove(net("10.2.1.11/32"))
            ]
        );
        assert!(state.ipcache().is_empty());
    }

    #[test]
    fn an_endpoint_waits_for_its_node() {
        let mut state = MeshState::new(local());
        register(&mut state, "c2", 2, "10.2.0.0/16", 10);
        let pod = Ipv4Addr::new(10, 2, 1, 11);
        assert!(
            state
                .apply(put(
                    keys::endpoint("c2", pod),
                    &endpoint(identity::make(2, 300), "n1"),
                    11
                ))
                .is_empty()
        );
        let changes = state.apply(put(
            keys::node("c2", "n1"),
            &node([198, 18, 2, 11], "10.2.1.0/24"),
            12,
        ));
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(state.ipcache().contains_key(&net("10.2.1.11/32")));
    }

    #[test]
    fn a_cluster_overlapping_an_earlier_one_is_refused_with_everything_it_publishes() {
        let mut state = MeshState::new(local());
        register(&mut state, "c2", 2, "10.2.0.0/16", 10);
        register(&mut state, "c3", 3, "10.2.128.0/17", 20);
        state.apply(put(
            keys::node("c3", "n1"),
            &node([198, 18, 3, 11], "10.2.130.0/24"),
            21,
        ));
        assert!(state.ipcache().is_empty());
        assert!(
            state.refused()["c3"].contains("overlaps cluster c2's 10.2.0.0/16"),
            "{:?}",
            state.refused()
        );

        // Overlapping this cluster is refused just the same.
        register(&mut state, "c4", 4, "10.1.128.0/17", 30);
        assert!(state.refused()["c4"].contains("overlaps cluster c1's"));

        // Once c2 leaves, c3 no longer overlaps anything and joins.
        state.apply(Update::Delete {
            key: keys::cluster("c2"),
        });
        assert!(!state.refused().contains_key("c3"));
        assert!(state.ipcache().contains_key(&net("10.2.130.0/24")));
    }

    #[test]
    fn a_cluster_without_its_id_claim_is_not_used() {
        let mut state = MeshState::new(local());
        let record = ClusterRecord {
            v: VERSION,
            id: 5,
            pod_cidrs: vec![net("10.5.0.0/16")],
            labels: BTreeMap::new(),
        };
        state.apply(put(keys::cluster("c5"), &record, 10));
        state.apply(raw(keys::cluster_id(5), b"someone-else", 10));
        state.apply(put(
            keys::node("c5", "n1"),
            &node([198, 18, 5, 11], "10.5.1.0/24"),
            11,
        ));
        assert!(state.ipcache().is_empty());
        assert!(state.refused()["c5"].contains("claimed by cluster someone-else"));
    }

    #[test]
    fn records_outside_their_cluster_are_ignored_and_counted() {
        let mut state = MeshState::new(local());
        register(&mut state, "c2", 2, "10.2.0.0/16", 10);
        // A node of c2 claiming part of c1's space.
        state.apply(put(
            keys::node("c2", "bad"),
            &node([198, 18, 2, 99], "10.1.9.0/24"),
            11,
        ));
        state.apply(put(
            keys::node("c2", "n1"),
            &node([198, 18, 2, 11], "10.2.1.0/24"),
            12,
        ));
        // c2 publishing an endpoint in c1's space, and one with c1's identity.
        state.apply(put(
            keys::endpoint("c2", Ipv4Addr::new(10, 1, 1, 50)),
            &endpoint(identity::make(2, 300), "n1"),
            13,
        ));
        state.apply(put(
            keys::endpoint("c2", Ipv4Addr::new(10, 2, 1, 50)),
            &endpoint(identity::make(1, 300), "n1"),
            14,
        ));
        // An identity numbered in c1's range, filed under c2.
        let labels = IdentityRecord {
            v: VERSION,
            labels: BTreeMap::new(),
        };
        state.apply(put(
            keys::identity("c2", identity::make(1, 400)),
            &labels,
            15,
        ));
        // Undecodable values.
        state.apply(raw(keys::node("c2", "garbage"), b"\xff{", 16));
        state.apply(raw(
            keys::endpoint("c2", Ipv4Addr::new(10, 2, 1, 60)),
            br#"{"v":9}"#,
            17,
        ));

        let ipcache = state.ipcache();
        assert_eq!(
            ipcache.keys().copied().collect::<Vec<_>>(),
            vec![net("10.2.1.0/24")]
        );
        assert_eq!(state.counters.invalid.get("node"), Some(&1));
        assert_eq!(state.counters.invalid.get("endpoint"), Some(&1));
        let rejected = |kind: &'static str| state.counters.rejected.get(&("c2".to_string(), kind));
        assert_eq!(rejected("node"), Some(&1));
        assert_eq!(rejected("endpoint"), Some(&2));
        assert_eq!(rejected("identity"), Some(&1));
        assert!(state.identity(identity::make(1, 400)).is_none());

        // Looked at again (a node update, a fresh listing), a rejected
        // record is not counted again; a new value of it is.
        state.apply(put(
            keys::node("c2", "n1"),
            &node([198, 18, 2, 12], "10.2.1.0/24"),
            18,
        ));
        let listing: Vec<StoredValue> = [
            stored(keys::cluster_id(2), b"c2".to_vec(), 10),
            stored(
                keys::cluster("c2"),
                ClusterRecord {
                    v: VERSION,
                    id: 2,
                    pod_cidrs: vec![net("10.2.0.0/16")],
                    labels: BTreeMap::new(),
                }
                .encode(),
                10,
            ),
            stored(
                keys::node("c2", "n1"),
                node([198, 18, 2, 12], "10.2.1.0/24").encode(),
                18,
            ),
            stored(
                keys::endpoint("c2", Ipv4Addr::new(10, 1, 1, 50)),
                endpoint(identity::make(2, 300), "n1").encode(),
                13,
            ),
        ]
        .into();
        state.replace(listing);
        let rejected = |kind: &'static str| state.counters.rejected.get(&("c2".to_string(), kind));
        assert_eq!(rejected("endpoint"), Some(&2));
        state.apply(put(
            keys::endpoint("c2", Ipv4Addr::new(10, 1, 1, 50)),
            &endpoint(identity::make(2, 301), "n1"),
            19,
        ));
        let rejected = |kind: &'static str| state.counters.rejected.get(&("c2".to_string(), kind));
        assert_eq!(rejected("endpoint"), Some(&3));
    }

    #[test]
    fn this_nodes_own_records_are_left_to_the_local_source() {
        let mut state = MeshState::new(local());
        state.apply(put(
            keys::node("c1", "n1"),
            &node([198, 18, 1, 11], "10.1.1.0/24"),
            5,
        ));
        state.apply(put(
            keys::endpoint("c1", Ipv4Addr::new(10, 1, 1, 11)),
            &endpoint(identity::make(1, 300), "n1"),
            6,
        ));
        assert!(state.ipcache().is_empty());
        // Another node of this cluster is used.
        state.apply(put(
            keys::node("c1", "n2"),
            &node([198, 18, 1, 12], "10.1.2.0/24"),
            7,
        ));
        assert_eq!(
            state.ipcache()[&net("10.1.2.0/24")].tunnel_endpoint,
            [198, 18, 1, 12]
        );
    }

    #[test]
    fn a_fresh_listing_removes_what_disappeared_meanwhile() {
        let mut state = MeshState::new(local());
        register(&mut state, "c2", 2, "10.2.0.0/16", 10);
        state.apply(put(
            keys::node("c2", "n1"),
            &node([198, 18, 2, 11], "10.2.1.0/24"),
            11,
        ));
        state.apply(put(
            keys::node("c2", "n2"),
            &node([198, 18, 2, 12], "10.2.2.0/24"),
            12,
        ));
        let listing = |key: String, value: Vec<u8>, revision| StoredValue {
            key,
            value,
            create_revision: revision,
            mod_revision: revision,
        };
        let cluster = ClusterRecord {
            v: VERSION,
            id: 2,
            pod_cidrs: vec![net("10.2.0.0/16")],
            labels: BTreeMap::new(),
        };
        let changes = state.replace(vec![
            listing(keys::cluster_id(2), b"c2".to_vec(), 10),
            listing(keys::cluster("c2"), cluster.encode(), 10),
            listing(
                keys::node("c2", "n2"),
                node([198, 18, 2, 13], "10.2.2.0/24").encode(),
                12,
            ),
        ]);
        let mut changes: Vec<String> = changes.iter().map(|change| format!("{change:?}")).collect();
        changes.sort();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes[0].starts_with("Remove(10.2.1.0/24)"), "{changes:?}");
        assert!(changes[1].contains("198, 18, 2, 13"), "{changes:?}");
    }
}

#[cfg(test)]
mod backend_tests {
    use super::*;
    use crate::mesh::records::VERSION;

    #[test]
    fn remote_backends_come_from_accepted_clusters_inside_their_cidrs() {
        let mut state = MeshState::new(LocalView {
            cluster: "c1".into(),
            cluster_id: 1,
            pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            node: "n1".into(),
        });
        let put = |key: String, value: Vec<u8>| {
            Update::Put(StoredValue {
                key,
                value,
                create_revision: 5,
                mod_revision: 5,
            })
        };
        let record = |id: u16, cidr: &str| {
            ClusterRecord {
                v: VERSION,
                id,
                pod_cidrs: vec![cidr.parse().unwrap()],
                labels: BTreeMap::new(),
            }
            .encode()
        };
        state.apply(put(keys::cluster_id(2), b"c2".to_vec()));
        state.apply(put(keys::cluster("c2"), record(2, "10.2.0.0/16")));
        assert!(state.take_services_changed());
        assert!(!state.take_services_changed());
        let backend = |cluster: &str, ip: &str| {
            put(
                keys::backend(
                    "shop",
                    "web",
                    cluster,
                    "http.tcp",
                    ip.parse().unwrap(),
                    8080,
                ),
                BackendRecord {
                    v: VERSION,
                    node: "n1".into(),
                }
                .encode(),
            )
        };
        state.apply(backend("c2", "10.2.1.11"));
        state.apply(backend("c2", "10.1.1.99")); // inside c1: rejected
        state.apply(backend("c1", "10.1.1.11")); // this cluster's: the local source's business
        state.apply(backend("c9", "10.9.1.11")); // unknown cluster
        assert!(state.take_services_changed());
        let remote = state.remote_backends("shop", "web");
        assert_eq!(remote.len(), 1, "{remote:?}");
        assert_eq!(
            (remote[0].cluster_id, remote[0].ip, remote[0].port),
            (2, "10.2.1.11".parse().unwrap(), 8080)
        );
        assert_eq!(
            state.counters.rejected.get(&("c2".to_string(), "backend")),
            Some(&1)
        );
        state.apply(Update::Delete {
            key: keys::backend(
                "shop",
                "web",
                "c2",
                "http.tcp",
                "10.2.1.11".parse().unwrap(),
                8080,
            ),
        });
        assert!(state.remote_backends("shop", "web").is_empty());
    }
}
