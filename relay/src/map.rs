//! The fleet as the UI draws it: each cluster with its nodes' health and
//! the global services it exports, and the traffic between each pair of
//! clusters (packets per second, drops per second by reason), from the
//! counters in every node's status, as rates between two reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use fleetnet_agent::api::status::Traffic;

use crate::view::FleetStatus;

/// What `/map` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetMap {
    pub clusters: Vec<MapCluster>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapCluster {
    pub name: String,
    pub nodes: Vec<MapNode>,
    pub pods: u64,
    /// Global services it exports backends for, as its own nodes see it.
    pub global_services: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapNode {
    pub name: String,
    pub ready: bool,
    pub problems: Vec<String>,
}

/// Traffic from one cluster to another (`none`: outside the mesh).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub source: String,
    pub destination: String,
    pub packets_per_second: f64,
    pub drops_per_second: BTreeMap<String, f64>,
}

/// Per-second rates of one node's counters from `before` (read at
/// `then`) to `now` (read at `at`). A pair not in `before`, or whose
/// counter went back (the node's maps were made anew), has no rate this
/// time.
pub fn rates(before: &[Traffic], then: f64, now: &[Traffic], at: f64) -> Vec<Edge> {
    let seconds = at - then;
    if seconds <= 0.0 {
        return Vec::new();
    }
    let earlier: BTreeMap<(&str, &str), &Traffic> = before
        .iter()
        .map(|t| {
            (
                (t.source_cluster.as_str(), t.destination_cluster.as_str()),
                t,
            )
        })
        .collect();
    let rate = |now: u64, before: u64| now.checked_sub(before).map(|d| d as f64 / seconds);
    now.iter()
        .filter_map(|current| {
            let key = (
                current.source_cluster.as_str(),
                current.destination_cluster.as_str(),
            );
            // A pair first seen has no rate yet: its counters may hold
            // much more than one interval (a cluster named only now).
            let previous = earlier.get(&key)?;
            let packets_per_second = rate(current.forwarded_packets, previous.forwarded_packets)?;
            let mut drops_per_second = BTreeMap::new();
            for (reason, packets) in &current.dropped_packets {
                let was = previous.dropped_packets.get(reason).copied().unwrap_or(0);
                drops_per_second.insert(reason.clone(), rate(*packets, was)?);
            }
            Some(Edge {
                source: current.source_cluster.clone(),
                destination: current.destination_cluster.clone(),
                packets_per_second,
                drops_per_second,
            })
        })
        .collect()
}

/// The map of `status`, with `edges` summed over nodes.
pub fn draw(status: &FleetStatus, edges: &[Edge]) -> FleetMap {
    let clusters = status
        .clusters
        .iter()
        .map(|cluster| {
            let reports = || cluster.nodes.iter().filter_map(|node| node.report.as_ref());
            MapCluster {
                name: cluster.name.clone(),
                nodes: cluster
                    .nodes
                    .iter()
                    .map(|node| MapNode {
                        name: node.node.clone(),
                        ready: node.error.is_none()
                            && node.report.as_ref().is_some_and(|r| r.ready),
                        problems: node.problems(),
                    })
                    .collect(),
                pods: reports().map(|r| r.pods).sum(),
                global_services: reports()
                    .flat_map(|r| r.clusters.iter().filter(|c| c.local))
                    .map(|c| c.global_services)
                    .max()
                    .unwrap_or(0),
            }
        })
        .collect();
    let mut summed: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for edge in edges {
        let total = summed
            .entry((edge.source.clone(), edge.destination.clone()))
            .or_insert_with(|| Edge {
                source: edge.source.clone(),
                destination: edge.destination.clone(),
                ..Edge::default()
            });
        total.packets_per_second += edge.packets_per_second;
        for (reason, rate) in &edge.drops_per_second {
            *total.drops_per_second.entry(reason.clone()).or_default() += rate;
        }
    }
    FleetMap {
        clusters,
        edges: summed.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(forwarded: u64, denied: u64) -> Traffic {
        Traffic {
            source_cluster: "c1".into(),
            destination_cluster: "c2".into(),
            forwarded_packets: forwarded,
            dropped_packets: BTreeMap::from([("policy_denied_ingress".into(), denied)]),
        }
    }

    #[test]
    fn rates_between_two_reads_and_none_after_a_reset() {
        let edges = rates(&[traffic(100, 10)], 10.0, &[traffic(300, 30)], 12.0);
        assert_eq!(edges.len(), 1);
        assert_eq!(edges[0].packets_per_second, 100.0);
        assert_eq!(edges[0].drops_per_second["policy_denied_ingress"], 10.0);
        assert!(
            rates(&[], 10.0, &[traffic(50, 0)], 11.0).is_empty(),
            "a pair first seen has no rate yet"
        );
        assert!(rates(&[traffic(100, 10)], 10.0, &[traffic(5, 0)], 11.0).is_empty());
        let summed = draw(
            &FleetStatus::default(),
            &[edges[0].clone(), edges[0].clone()],
        );
        assert_eq!(summed.edges[0].packets_per_second, 200.0);
    }
}
