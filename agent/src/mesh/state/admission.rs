//! Cluster admission: which clusters are used, in registration order; a
//! cluster without its id claim waits, one whose id or pod CIDRs collide
//! with an earlier one is refused as a whole.

use std::collections::BTreeMap;

use dataplane_common::identity;
use ipnet::Ipv4Net;
use tracing::info;

use fleetnet_store::records::ClusterRecord;

use super::*;

impl MeshState {
    /// Decides which clusters are used; true when that set changed.
    pub(super) fn decide_clusters(&mut self) -> bool {
        let local = ClusterRecord {
            v: fleetnet_store::records::VERSION,
            id: self.viewpoint.cluster_id,
            pod_cidrs: self.viewpoint.pod_cidrs.clone(),
            labels: BTreeMap::new(),
            routing: self.viewpoint.routing,
            routing_peers: self.viewpoint.routing_peers.clone(),
        };
        let mut accepted = BTreeMap::from([(self.viewpoint.cluster.clone(), local)]);
        let mut refused = BTreeMap::new();
        let mut candidates: Vec<(&String, &(ClusterRecord, i64))> = self
            .clusters
            .iter()
            .filter(|(name, _)| **name != self.viewpoint.cluster)
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
            if !self.accepted.contains_key(name) && *name != self.viewpoint.cluster {
                info!(cluster = %name, "cluster joined the mesh");
            }
        }
        let changed = accepted != self.accepted;
        self.accepted = accepted;
        self.refused = refused;
        self.decide_routes();
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
}

enum Decision {
    Accept,
    Refuse(String),
    Wait,
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}
