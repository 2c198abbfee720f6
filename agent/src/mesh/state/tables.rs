//! The raw tables: every record stored as read, decoded and checked
//! against the cluster its key names, with what is undecodable or claims
//! another cluster's counted once.

use std::{net::Ipv4Addr, time::SystemTime};

use dataplane_common::identity;
use tracing::warn;

use fleetnet_store::{
    Update,
    keys::{self, Key},
    records::{
        BackendRecord, ClusterRecord, EndpointRecord, IdentityRecord, MemberRecord, NodeRecord,
        Record,
    },
};

use super::*;

impl MeshState {
    /// Records an update in the raw tables; returns its key if it matters.
    pub(super) fn store(&mut self, update: Update) -> Option<Key> {
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
            Key::Endpoint {
                cluster,
                ip,
                exported,
            } => {
                // A pod whose namespace changes export moves between the
                // shared and the local key in one transaction, whose two
                // events arrive on two watches in either order: deleting
                // the key it left does not remove it from the key it took.
                let held_by_other_key = self.endpoints.contains_key(ip)
                    && self.local_endpoints.contains(ip) == *exported;
                if value.is_none() && held_by_other_key {
                    return Some(parsed);
                }
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
                    if !*exported {
                        self.local_endpoints.insert(*ip);
                    }
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
                let record = value
                    .and_then(|v| self.decode::<IdentityRecord>(&key, &v, "identity"))
                    .filter(|_| self.identity_in_range(cluster, *id, &key));
                if let Some(record) = record {
                    self.identities.insert(*id, (cluster.clone(), record));
                }
            }
            Key::ExportedIdentity { cluster, id, node } => {
                let record = value
                    .and_then(|v| self.decode::<IdentityRecord>(&key, &v, "identity"))
                    .filter(|_| self.identity_in_range(cluster, *id, &key));
                self.peers_changed |= self.exported_identities.set(cluster, *id, node, record);
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
            Key::Member { name } => {
                match value.and_then(|v| self.decode::<MemberRecord>(&key, &v, "member")) {
                    Some(record) => self.members.insert(name.clone(), record.state),
                    None => self.members.remove(name),
                };
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
    pub(super) fn reject(&mut self, cluster: &str, kind: &'static str, key: &str, reason: &str) {
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

    /// Identity `id`, filed under `cluster` at `key`, is numbered in that
    /// cluster's range; one that is not is rejected (an unknown cluster's
    /// waits, unjudged).
    fn identity_in_range(&mut self, cluster: &str, id: u32, key: &str) -> bool {
        let Some(cluster_id) = self.cluster_id_of(cluster) else {
            return false;
        };
        let in_range = identity::cluster_of(id) == cluster_id;
        if !in_range {
            self.reject(
                cluster,
                "identity",
                key,
                &format!("identity {id} is outside cluster {cluster}'s range"),
            );
        }
        in_range
    }

    fn unindex_endpoint(&mut self, ip: Ipv4Addr) {
        self.local_endpoints.remove(&ip);
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
        if cluster == self.viewpoint.cluster {
            return Some(self.viewpoint.cluster_id);
        }
        self.clusters.get(cluster).map(|(record, _)| record.id)
    }
}
