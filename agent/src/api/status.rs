//! What `/status` answers and `fleetnet status` prints: this node, its
//! cluster, every cluster of the mesh as this node sees it, and how full
//! the BPF maps are, and the fleet revision it runs. Unhealthy means: the
//! agent is not ready, a remote cluster has no node publishing, a cluster
//! is refused or routes otherwise than this one towards it, a map is full,
//! or the revision its cluster targets was rejected.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The version of fleetnet the agent runs.
    #[serde(default)]
    pub version: String,
    pub node: String,
    pub cluster: String,
    pub cluster_id: u16,
    pub ready: bool,
    pub etcd_connected: bool,
    /// Local pods attached, and waiting for their interface.
    pub pods: u64,
    pub pods_pending: u64,
    pub policies: u64,
    pub services: u64,
    /// Every accepted cluster, this one included (its other nodes).
    pub clusters: Vec<ClusterStatus>,
    pub refused: Vec<RefusedCluster>,
    pub maps: Vec<MapFill>,
    #[serde(default)]
    pub fleet: FleetStatus,
    /// Packets between clusters as this node's datapath counted them since
    /// its maps were made, for the relay's map of the fleet.
    #[serde(default)]
    pub traffic: Vec<Traffic>,
    /// When `traffic` was read (Unix seconds): rates are taken between two
    /// readings, not two reports.
    #[serde(default)]
    pub traffic_read_unix: Option<f64>,
}

/// What went from one cluster to another through this node: packets
/// forwarded as they left their pod (each once, on the sender's node),
/// and packets dropped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// `none` outside the mesh.
    pub source_cluster: String,
    pub destination_cluster: String,
    pub forwarded_packets: u64,
    pub dropped_packets: std::collections::BTreeMap<String, u64>,
}

/// The fleet revision this node runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// None: only the agent's own configuration.
    pub applied: Option<u64>,
    /// What the cluster's target names.
    pub target: Option<u64>,
    /// Why the target was not applied.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub id: u16,
    /// This node's own cluster.
    pub local: bool,
    /// At least one of its nodes publishes (its lease is alive).
    pub connected: bool,
    pub nodes: u64,
    pub endpoints: u64,
    /// Global services it exports backends for.
    pub global_services: u64,
    /// Unix time of its last change in the mesh.
    pub last_update_unix: Option<f64>,
    /// Seconds since then, when the report was served.
    pub last_update_age_seconds: Option<f64>,
    /// How its pods are reached: `tunnel` or `native`.
    #[serde(default)]
    pub routing: String,
    /// Why it is tunnelled though one side asks for native routing.
    #[serde(default)]
    pub routing_mismatch: Option<String>,
    /// Its member state (`joined`, `cordoned`, `draining`, `retired`) when
    /// it joined with `fleetnet cluster join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefusedCluster {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

impl StatusReport {
    /// Fills the ages of last updates as of `now` (Unix seconds).
    pub fn aged(mut self, now: f64) -> Self {
        for cluster in &mut self.clusters {
            cluster.last_update_age_seconds =
                cluster.last_update_unix.map(|then| (now - then).max(0.0));
        }
        self
    }

    /// Why the node is unhealthy; empty when it is healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.ready {
            problems.push("the agent is not ready".to_string());
        }
        if !self.etcd_connected {
            problems.push("the mesh watch is not connected to etcd".to_string());
        }
        for cluster in self.clusters.iter().filter(|c| !c.local && !c.connected) {
            problems.push(format!(
                "cluster {} is disconnected: none of its nodes publishes",
                cluster.name
            ));
        }
        for refused in &self.refused {
            problems.push(format!(
                "cluster {} is refused: {}",
                refused.name, refused.reason
            ));
        }
        for cluster in &self.clusters {
            if let Some(mismatch) = &cluster.routing_mismatch {
                problems.push(format!(
                    "cluster {} is tunnelled for a routing mismatch: {mismatch}; set routing the same on both",
                    cluster.name
                ));
            }
        }
        for map in self
            .maps
            .iter()
            .filter(|m| m.capacity > 0 && m.entries >= m.capacity)
        {
            problems.push(format!(
                "map {} is full ({} entries)",
                map.name, map.capacity
            ));
        }
        if let (Some(target), Some(error)) = (self.fleet.target, &self.fleet.error) {
            problems.push(format!("fleet revision {target} was rejected: {error}"));
        }
        problems
    }

    /// The report as `fleetnet status` prints it.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let ready = if self.ready { "ready" } else { "NOT READY" };
        let etcd = if self.etcd_connected {
            "connected"
        } else {
            "DISCONNECTED"
        };
        let _ = writeln!(
            out,
            "node {} of cluster {} (id {}): {ready}, etcd {etcd}, fleetnet {}",
            self.node, self.cluster, self.cluster_id, self.version
        );
        let _ = writeln!(
            out,
            "local: {} pods ({} pending), {} policies, {} services",
            self.pods, self.pods_pending, self.policies, self.services
        );
        let revision = self
            .fleet
            .applied
            .map_or("none (the agent's own configuration)".to_string(), |r| {
                format!("revision {r}")
            });
        let _ = writeln!(out, "fleet: {revision}");
        let _ = writeln!(
            out,
            "\n{:<20} {:>6} {:<13} {:<8} {:>6} {:>10} {:>16} {:>12}",
            "CLUSTER",
            "ID",
            "STATE",
            "ROUTING",
            "NODES",
            "ENDPOINTS",
            "GLOBAL SERVICES",
            "LAST UPDATE"
        );
        for cluster in &self.clusters {
            let state = match (cluster.local, cluster.connected, cluster.member.as_deref()) {
                // Cordoned or draining says more than connected.
                (_, _, Some(member @ ("cordoned" | "draining"))) => member,
                (true, _, _) => "local",
                (false, true, _) => "connected",
                (false, false, _) => "DISCONNECTED",
            };
            let age = cluster
                .last_update_age_seconds
                .map_or("-".to_string(), |age| format!("{age:.1}s ago"));
            let _ = writeln!(
                out,
                "{:<20} {:>6} {:<13} {:<8} {:>6} {:>10} {:>16} {:>12}",
                cluster.name,
                cluster.id,
                state,
                cluster.routing,
                cluster.nodes,
                cluster.endpoints,
                cluster.global_services,
                age
            );
        }
        for refused in &self.refused {
            let _ = writeln!(
                out,
                "{:<20} {:>6} REFUSED: {}",
                refused.name, "-", refused.reason
            );
        }
        let _ = writeln!(
            out,
            "\n{:<14} {:>10} {:>10} {:>6}",
            "MAP", "ENTRIES", "CAPACITY", "FILL"
        );
        for map in &self.maps {
            let fill = if map.capacity == 0 {
                0.0
            } else {
                100.0 * map.entries as f64 / map.capacity as f64
            };
            let _ = writeln!(
                out,
                "{:<14} {:>10} {:>10} {:>5.1}%",
                map.name, map.entries, map.capacity, fill
            );
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(out, "\nhealthy");
        } else {
            let _ = writeln!(out, "\nunhealthy:");
            for problem in problems {
                let _ = writeln!(out, "  - {problem}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_what_is_wrong() {
        let mut report = StatusReport {
            node: "n1".into(),
            cluster: "c1".into(),
            cluster_id: 1,
            ready: true,
            etcd_connected: true,
            clusters: vec![
                ClusterStatus {
                    name: "c1".into(),
                    id: 1,
                    local: true,
                    ..Default::default()
                },
                ClusterStatus {
                    name: "c2".into(),
                    id: 2,
                    connected: true,
                    nodes: 3,
                    last_update_unix: Some(100.0),
                    ..Default::default()
                },
            ],
            maps: vec![MapFill {
                name: "policy".into(),
                entries: 10,
                capacity: 100,
            }],
            ..Default::default()
        };
        assert!(report.problems().is_empty(), "{:?}", report.problems());
        assert!(report.render_text().contains("healthy"));
        assert_eq!(
            report.clone().aged(102.5).clusters[1].last_update_age_seconds,
            Some(2.5)
        );

        report.clusters[1].connected = false;
        report.maps[0].entries = 100;
        report.refused.push(RefusedCluster {
            name: "rogue".into(),
            reason: "its pod CIDRs overlap c1's".into(),
        });
        report.fleet = FleetStatus {
            applied: Some(3),
            target: Some(4),
            error: Some("policy shop/db: spec.podSelector: …".into()),
        };
        report.clusters[1].routing = "tunnel".into();
        report.clusters[1].routing_mismatch =
            Some("this cluster routes native towards it, it routes tunnel back".into());
        assert_eq!(
            report.problems(),
            [
                "cluster c2 is disconnected: none of its nodes publishes",
                "cluster rogue is refused: its pod CIDRs overlap c1's",
                "cluster c2 is tunnelled for a routing mismatch: this cluster routes native \
                 towards it, it routes tunnel back; set routing the same on both",
                "map policy is full (100 entries)",
                "fleet revision 4 was rejected: policy shop/db: spec.podSelector: …",
            ]
        );
        let text = report.render_text();
        assert!(
            text.contains("DISCONNECTED")
                && text.contains(" tunnel ")
                && text.contains("fleet: revision 3\n")
                && text.contains("unhealthy:"),
            "{text}"
        );
    }
}
