//! Cluster admission: which clusters are used, in registration order; a
//! cluster without its id claim waits, one whose id or pod CIDRs collide
//! with an earlier one is refused as a whole.

use std::collections::BTreeMap;

use dataplane_common::identity;
use ipnet::Ipv4Net;
use tracing::info;

use fleetnet_store::records::ClusterRecord;

use super::*;

/// Up to this many clusters joining (or changing route) at once are
/// logged one line each; more, in one line.
pub(super) const LOGGED_ONE_BY_ONE: usize = 8;

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
        let mut taken = Taken::default();
        taken.add(&self.viewpoint.cluster, &local);
        let mut accepted = BTreeMap::from([(self.viewpoint.cluster.clone(), local)]);
        let mut refused = BTreeMap::new();
        let mut candidates: Vec<(&String, &(ClusterRecord, i64))> = self
            .clusters
            .iter()
            .filter(|(name, _)| **name != self.viewpoint.cluster)
            .collect();
        candidates.sort_by(|(a, (_, a_revision)), (b, (_, b_revision))| {
            (a_revision, a).cmp(&(b_revision, b))
        });
        for (name, (record, _)) in candidates {
            match self.decide(name, record, &taken) {
                Decision::Accept => {
                    taken.add(name, record);
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
        let joined: Vec<&String> = accepted
            .keys()
            .filter(|name| !self.accepted.contains_key(*name) && **name != self.viewpoint.cluster)
            .collect();
        // One line each, or one for all when a fleet arrives at once.
        match joined.as_slice() {
            many if many.len() > LOGGED_ONE_BY_ONE => info!(
                first = %many[0],
                last = %many[many.len() - 1],
                "{} clusters joined the mesh",
                many.len()
            ),
            few => {
                for name in few {
                    info!(cluster = %name, "cluster joined the mesh");
                }
            }
        }
        let changed = accepted != self.accepted;
        self.accepted = accepted;
        self.refused = refused;
        self.decide_routes();
        changed
    }

    fn decide(&self, name: &str, record: &ClusterRecord, taken: &Taken) -> Decision {
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
        if let Some(other) = taken.ids.get(&record.id) {
            return Decision::Refuse(format!(
                "cluster id {} is already used by cluster {other}",
                record.id
            ));
        }
        for cidr in &record.pod_cidrs {
            if let Some((other, theirs)) = taken.overlapping(cidr) {
                return Decision::Refuse(format!(
                    "its pod CIDR {cidr} overlaps cluster {other}'s {theirs}; pod CIDRs must not overlap across the mesh"
                ));
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

/// The ids and pod CIDRs of the clusters accepted so far, indexed so that
/// deciding a cluster costs a few lookups, not a pass over every other
/// (thousands of clusters arrive at once when an agent starts).
#[derive(Default)]
struct Taken {
    ids: BTreeMap<u16, String>,
    /// Pod CIDRs by first address: (last address, cluster, CIDR). Accepted
    /// clusters' CIDRs never overlap, so these ranges are disjoint.
    ranges: BTreeMap<u32, (u32, String, Ipv4Net)>,
}

impl Taken {
    fn add(&mut self, name: &str, record: &ClusterRecord) {
        self.ids.insert(record.id, name.to_string());
        // A CIDR inside another of the same cluster adds nothing, and
        // would break the ranges' disjointness.
        for cidr in &record.pod_cidrs {
            let nested = record
                .pod_cidrs
                .iter()
                .any(|outer| outer != cidr && outer.contains(cidr));
            if !nested {
                let range = (u32::from(cidr.broadcast()), name.to_string(), *cidr);
                self.ranges.insert(u32::from(cidr.network()), range);
            }
        }
    }

    /// An accepted cluster's CIDR that overlaps `cidr`: among disjoint
    /// ranges, only the last one starting at or before `cidr`'s end can.
    fn overlapping(&self, cidr: &Ipv4Net) -> Option<(&str, &Ipv4Net)> {
        let (start, end) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
        let (_, (their_end, name, theirs)) = self.ranges.range(..=end).next_back()?;
        (*their_end >= start).then_some((name.as_str(), theirs))
    }
}
