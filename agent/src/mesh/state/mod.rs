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
//!
//! The raw tables ([`tables`]), which clusters are used ([`admission`]), how
//! each is reached ([`routing`]) and the ipcache they ask for ([`ipcache`])
//! each live in a module of their own.

mod admission;
#[cfg(test)]
mod backend_tests;
mod exported;
mod ipcache;
mod routing;
#[cfg(test)]
mod routing_tests;
mod tables;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::SystemTime,
};

use dataplane_common::IpcacheEntry;
use ipnet::Ipv4Net;

use fleetnet_policy::ports::IdentityPorts;
use fleetnet_store::{
    StoredValue, Update,
    keys::Key,
    records::{
        BackendRecord, ClusterRecord, EndpointRecord, IdentityRecord, MemberState, NodeRecord,
        RoutingMode,
    },
};

pub use self::routing::Route;

/// Where the mesh is seen from: this agent's cluster and node, whose own
/// records the local source decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewpoint {
    pub cluster: String,
    pub cluster_id: u16,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub node: String,
    /// How this cluster's pods reach other clusters' (`routing.mode`).
    pub routing: RoutingMode,
    /// Exceptions by peer cluster (`routing.peers`).
    pub routing_peers: BTreeMap<String, RoutingMode>,
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
    viewpoint: Viewpoint,
    clusters: BTreeMap<String, (ClusterRecord, i64)>,
    id_claims: BTreeMap<u16, String>,
    accepted: BTreeMap<String, ClusterRecord>,
    refused: BTreeMap<String, String>,
    /// How each accepted cluster is reached, this one included.
    routes: BTreeMap<String, Route>,
    nodes: BTreeMap<(String, String), NodeRecord>,
    endpoints: BTreeMap<Ipv4Addr, (String, EndpointRecord)>,
    endpoints_by_node: BTreeMap<(String, String), BTreeSet<Ipv4Addr>>,
    /// Endpoints read from this cluster's local keys (not exported).
    local_endpoints: BTreeSet<Ipv4Addr>,
    /// Identities' master records: this cluster's (and those of clusters
    /// whose agents predate exported identities).
    identities: BTreeMap<u32, (String, IdentityRecord)>,
    /// Other clusters' identities of what they export.
    exported_identities: exported::ExportedIdentities,
    /// Exported backends by (namespace, service).
    backends: BTreeMap<(String, String), BTreeMap<BackendId, BackendRecord>>,
    /// Backends or clusters changed since [`MeshState::take_services_changed`].
    services_changed: bool,
    /// Identities, endpoints or clusters changed since
    /// [`MeshState::take_peers_changed`].
    peers_changed: bool,
    desired: BTreeMap<Ipv4Net, (Owner, IpcacheEntry)>,
    /// The pod CIDRs each node holds in `desired`.
    node_cidrs: BTreeMap<(String, String), Vec<Ipv4Net>>,
    /// When each cluster last changed a key.
    last_change: BTreeMap<String, SystemTime>,
    /// Keys rejected (and counted) so far, with the reason.
    rejected_keys: BTreeMap<String, String>,
    /// Members' states, from `fleetnet cluster join`/`cordon`/`retire`;
    /// clusters that never joined have none.
    members: BTreeMap<String, MemberState>,
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
    /// How its pods are reached from this cluster's.
    pub route: Route,
    /// Its member state, if it joined with `fleetnet cluster join`.
    pub member: Option<MemberState>,
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
    /// Its cluster is cordoned: chosen for new connections only when no
    /// other backend is left.
    pub cordoned: bool,
}

impl MeshState {
    pub fn new(viewpoint: Viewpoint) -> Self {
        let mut state = Self {
            viewpoint,
            clusters: BTreeMap::new(),
            id_claims: BTreeMap::new(),
            accepted: BTreeMap::new(),
            refused: BTreeMap::new(),
            routes: BTreeMap::new(),
            nodes: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            endpoints_by_node: BTreeMap::new(),
            local_endpoints: BTreeSet::new(),
            identities: BTreeMap::new(),
            exported_identities: Default::default(),
            backends: BTreeMap::new(),
            services_changed: true,
            peers_changed: true,
            desired: BTreeMap::new(),
            node_cidrs: BTreeMap::new(),
            last_change: BTreeMap::new(),
            rejected_keys: BTreeMap::new(),
            members: BTreeMap::new(),
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
        self.identities
            .get(&id)
            .map(|(_, record)| record)
            .or_else(|| self.exported_identities.get(id).map(|(_, record)| record))
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
        let masters = self
            .identities
            .iter()
            .map(|(id, (cluster, record))| (*id, cluster.as_str(), record));
        let exported = self
            .exported_identities
            .iter()
            .filter(|(id, _, _)| !self.identities.contains_key(id));
        masters
            .chain(exported)
            .filter(|(_, cluster, _)| self.accepted.contains_key(*cluster))
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
            .filter(|(cluster, ..)| *cluster != self.viewpoint.cluster)
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
                        cordoned: self.cordoned(cluster),
                    })
            })
            .collect()
    }

    /// `cluster` joined and was cordoned (or is draining).
    pub fn cordoned(&self, cluster: &str) -> bool {
        self.members
            .get(cluster)
            .is_some_and(|state| state.is_cordoned())
    }

    /// This agent's own cluster was retired from the fleet.
    pub fn retired(&self) -> bool {
        self.members.get(&self.viewpoint.cluster) == Some(&MemberState::Retired)
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
                    route: self.route(name),
                    member: self.members.get(name).copied(),
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
        self.local_endpoints.clear();
        self.identities.clear();
        self.exported_identities.clear();
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
        self.apply_all([update])
    }

    /// Applies watched changes in order; returns the ipcache changes they
    /// cause. Which clusters are used is decided once, after all of them:
    /// thousands of registrations arrive together when an agent meets a
    /// large fleet.
    pub fn apply_all(&mut self, updates: impl IntoIterator<Item = Update>) -> Vec<IpcacheChange> {
        let mut changes = Vec::new();
        let mut clusters_changed = false;
        for update in updates {
            let key = match &update {
                Update::Put(stored) => &stored.key,
                Update::Delete { key } => key,
            };
            // A new value is judged (and counted) afresh.
            self.rejected_keys.remove(key);
            let Some(parsed) = self.store(update) else {
                continue;
            };
            match parsed {
                Key::Cluster { .. } | Key::ClusterId { .. } => clusters_changed = true,
                Key::Node { cluster, node } => changes.extend(self.refresh_node(&cluster, &node)),
                Key::Member { .. } => self.services_changed = true,
                Key::Endpoint { ip, .. } => changes.extend(self.refresh_endpoint(ip)),
                _ => {}
            }
        }
        if clusters_changed {
            changes.extend(self.settle_clusters());
        }
        changes
    }

    /// Decides the clusters again and refreshes the nodes of those whose
    /// use, record or route changed.
    fn settle_clusters(&mut self) -> Vec<IpcacheChange> {
        let (accepted, routes) = (self.accepted.clone(), self.routes.clone());
        if !self.decide_clusters() {
            return Vec::new();
        }
        self.services_changed = true;
        self.peers_changed = true;
        let touched: BTreeSet<String> = accepted
            .keys()
            .chain(self.accepted.keys())
            .filter(|name| {
                accepted.get(*name) != self.accepted.get(*name)
                    || routes.get(*name) != self.routes.get(*name)
            })
            .cloned()
            .collect();
        let mut changes = Vec::new();
        for cluster in touched {
            let nodes: Vec<String> = self
                .nodes
                .range((cluster.clone(), String::new())..)
                .take_while(|((c, _), _)| *c == cluster)
                .map(|((_, node), _)| node.clone())
                .collect();
            for node in nodes {
                changes.extend(self.refresh_node(&cluster, &node));
            }
        }
        changes
    }
}

pub use self::ipcache::diff;
