//! What the relay serves: every node's latest status, and the flows of
//! every node merged into one numbered stream, so `fleetnet observe
//! --fleet` pages through the relay as `fleetnet observe` pages through
//! one agent.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
    net::SocketAddr,
};

use serde::{Deserialize, Serialize};

use fleetnet_agent::{
    api::status::{StatusReport, Traffic},
    observe::flows::{FlowPage, FlowRecord, FlowStore},
};
use fleetnet_fleet::model::Run;

use crate::map::{self, Edge, FleetMap};

/// What `/status` of the relay answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub clusters: Vec<ClusterNodes>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNodes {
    pub name: String,
    pub nodes: Vec<NodeStatus>,
}

/// One node as the relay last reached it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// Its observe listener.
    pub address: SocketAddr,
    /// Why its last status could not be read; its report, if any, is the
    /// one read before.
    pub error: Option<String>,
    pub report: Option<StatusReport>,
    /// When the report was read (Unix seconds).
    #[serde(default)]
    pub read_unix: Option<f64>,
}

impl NodeStatus {
    /// Why the node is unhealthy; empty when it is healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(error) = &self.error {
            problems.push(format!("the relay cannot read it: {error}"));
        }
        if let Some(report) = &self.report {
            problems.extend(report.problems());
        } else if self.error.is_none() {
            problems.push("not read yet".into());
        }
        problems
    }
}

impl FleetStatus {
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeStatus)> {
        self.clusters.iter().flat_map(|cluster| {
            cluster
                .nodes
                .iter()
                .map(move |node| (cluster.name.as_str(), node))
        })
    }

    /// Every node's problems, as `cluster/node: problem`.
    pub fn problems(&self) -> Vec<String> {
        self.nodes()
            .flat_map(|(cluster, node)| {
                node.problems()
                    .into_iter()
                    .map(move |problem| format!("{cluster}/{}: {problem}", node.node))
            })
            .collect()
    }

    /// A table of every node, then the problems.
    pub fn render_text(&self) -> String {
        let mut text = format!(
            "{:<16} {:<16} {:<22} {:<6} {:<9} {:>5} {:>9} {:>8}\n",
            "CLUSTER", "NODE", "ADDRESS", "READY", "REVISION", "PODS", "CLUSTERS", "VERSION"
        );
        for (cluster, node) in self.nodes() {
            let report = node.report.as_ref();
            let _ = writeln!(
                text,
                "{:<16} {:<16} {:<22} {:<6} {:<9} {:>5} {:>9} {:>8}",
                cluster,
                node.node,
                node.address,
                match (report, &node.error) {
                    (_, Some(_)) => "?",
                    (Some(report), None) if report.ready => "yes",
                    _ => "no",
                },
                report
                    .and_then(|r| r.fleet.applied)
                    .map_or("-".to_string(), |revision| revision.to_string()),
                report.map_or("-".to_string(), |r| r.pods.to_string()),
                report.map_or("-".to_string(), |r| {
                    let connected = r.clusters.iter().filter(|c| c.local || c.connected).count();
                    format!("{connected}/{}", r.clusters.len())
                }),
                report.map_or("-", |r| r.version.as_str()),
            );
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(
                text,
                "\nhealthy: {} nodes in {} clusters",
                self.nodes().count(),
                self.clusters.len()
            );
        } else {
            let _ = writeln!(text, "\nproblems:");
            for problem in problems {
                let _ = writeln!(text, "  {problem}");
            }
        }
        text
    }
}

/// The relay's state, updated by each polling round.
pub struct View {
    flows: FlowStore,
    /// Per agent (cluster, node): the `since` of its next page.
    cursors: HashMap<(String, String), u64>,
    status: BTreeMap<String, BTreeMap<String, NodeStatus>>,
    /// Per agent: its traffic's rates between its last two readings.
    edges: HashMap<(String, String), Vec<Edge>>,
    samples: HashMap<(String, String), Sample>,
    /// The fleet's rollouts, newest first.
    runs: Vec<Run>,
}

/// An agent's last reading of its traffic counters, and the rates it
/// gave.
struct Sample {
    traffic: Vec<Traffic>,
    at: f64,
    edges: Vec<Edge>,
}

/// What one poll of one agent brought.
pub struct Polled {
    pub cluster: String,
    pub node: String,
    pub address: SocketAddr,
    pub status: Result<StatusReport, String>,
    pub flows: Result<FlowPage, String>,
}

impl View {
    pub fn new(flows_kept: usize) -> Self {
        Self {
            flows: FlowStore::new(flows_kept),
            cursors: HashMap::new(),
            status: BTreeMap::new(),
            edges: HashMap::new(),
            samples: HashMap::new(),
            runs: Vec::new(),
        }
    }

    /// Where the next page of `cluster/node`'s flows starts.
    pub fn cursor(&self, cluster: &str, node: &str) -> u64 {
        self.cursors
            .get(&(cluster.to_string(), node.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Takes in a round read at `now` (Unix seconds): the flows new since
    /// the last, oldest first, and every node's status and traffic. Nodes
    /// not in the round have left the mesh.
    pub fn merge(&mut self, round: Vec<Polled>, now: f64) {
        let mut status: BTreeMap<String, BTreeMap<String, NodeStatus>> = BTreeMap::new();
        let mut cursors = HashMap::new();
        let mut edges = HashMap::new();
        let mut new_flows: Vec<FlowRecord> = Vec::new();
        for polled in round {
            let agent = (polled.cluster.clone(), polled.node.clone());
            let mut cursor = self.cursors.get(&agent).copied().unwrap_or(0);
            if let Ok(page) = polled.flows {
                if page.next < cursor {
                    // The agent restarted and numbers from 1 again: all it
                    // holds is new, read from its start next round.
                    cursor = 0;
                } else {
                    // Node names repeat across clusters: merged flows name
                    // theirs `cluster/node`, as Hubble Relay's do.
                    new_flows.extend(page.flows.into_iter().map(|mut flow| {
                        flow.node = format!("{}/{}", polled.cluster, flow.node);
                        flow
                    }));
                    cursor = page.next;
                }
            }
            cursors.insert(agent.clone(), cursor);
            let before = self
                .status
                .get(&polled.cluster)
                .and_then(|nodes| nodes.get(&polled.node));
            let node = match polled.status {
                Ok(report) => {
                    edges.insert(agent.clone(), self.traffic_rates(&agent, &report));
                    NodeStatus {
                        node: polled.node.clone(),
                        address: polled.address,
                        error: None,
                        report: Some(report),
                        read_unix: Some(now),
                    }
                }
                Err(error) => NodeStatus {
                    node: polled.node.clone(),
                    address: polled.address,
                    error: Some(error),
                    report: before.and_then(|node| node.report.clone()),
                    read_unix: before.and_then(|node| node.read_unix),
                },
            };
            status
                .entry(polled.cluster)
                .or_default()
                .insert(polled.node, node);
        }
        new_flows.sort_by_key(|flow| flow.time_ns);
        for flow in new_flows {
            self.flows.push(flow);
        }
        self.cursors = cursors;
        self.status = status;
        self.edges = edges;
        self.samples
            .retain(|agent, _| self.cursors.contains_key(agent));
    }

    /// `agent`'s traffic rates as of `report`: between its last two
    /// readings of the counters (an agent reads them once a second, the
    /// relay may ask more often).
    fn traffic_rates(&mut self, agent: &(String, String), report: &StatusReport) -> Vec<Edge> {
        let Some(at) = report.traffic_read_unix else {
            return Vec::new();
        };
        match self.samples.get(agent) {
            Some(sample) if sample.at >= at => sample.edges.clone(),
            previous => {
                let edges = previous
                    .map(|sample| map::rates(&sample.traffic, sample.at, &report.traffic, at))
                    .unwrap_or_default();
                self.samples.insert(
                    agent.clone(),
                    Sample {
                        traffic: report.traffic.clone(),
                        at,
                        edges: edges.clone(),
                    },
                );
                edges
            }
        }
    }

    /// The fleet's rollouts as last read, newest first.
    pub fn set_runs(&mut self, mut runs: Vec<Run>) {
        runs.sort_by_key(|run| std::cmp::Reverse(run.id));
        self.runs = runs;
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    pub fn map(&self) -> FleetMap {
        let edges: Vec<Edge> = self.edges.values().flatten().cloned().collect();
        map::draw(&self.status(), &edges)
    }

    pub fn flows_since(&self, since: u64) -> FlowPage {
        self.flows.since(since)
    }

    pub fn status(&self) -> FleetStatus {
        FleetStatus {
            clusters: self
                .status
                .iter()
                .map(|(name, nodes)| ClusterNodes {
                    name: name.clone(),
                    nodes: nodes.values().cloned().collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(node: &str, seqs: std::ops::RangeInclusive<u64>, time: u64) -> FlowPage {
        FlowPage {
            next: seqs.end() + 1,
            flows: seqs
                .map(|seq| FlowRecord {
                    seq,
                    time_ns: time + seq,
                    node: node.into(),
                    ..FlowRecord::default()
                })
                .collect(),
        }
    }

    fn polled(cluster: &str, node: &str, flows: Result<FlowPage, String>) -> Polled {
        Polled {
            cluster: cluster.into(),
            node: node.into(),
            address: "198.18.0.10:9965".parse().unwrap(),
            status: Err("down".into()),
            flows,
        }
    }

    #[test]
    fn rounds_merge_by_time_and_follow_each_agents_numbering() {
        let mut view = View::new(100);
        view.merge(
            vec![
                polled("c1", "n1", Ok(page("n1", 1..=2, 2000))),
                polled("c2", "n1", Ok(page("n1", 1..=1, 1000))),
            ],
            1.0,
        );
        let merged = view.flows_since(0);
        let names: Vec<&str> = merged.flows.iter().map(|f| f.node.as_str()).collect();
        assert_eq!(
            names,
            ["c2/n1", "c1/n1", "c1/n1"],
            "by time, named cluster/node"
        );
        assert_eq!(view.cursor("c1", "n1"), 3);
        // An agent that cannot be reached keeps its place.
        view.merge(
            vec![
                polled("c1", "n1", Err("timeout".into())),
                polled("c2", "n1", Ok(page("n1", 2..=2, 1000))),
            ],
            2.0,
        );
        assert_eq!(view.cursor("c1", "n1"), 3);
        assert_eq!(view.flows_since(merged.next).flows.len(), 1);
        // A restarted agent numbers from 1: read from its start next round.
        view.merge(vec![polled("c1", "n1", Ok(page("n1", 1..=1, 5000)))], 3.0);
        assert_eq!(view.cursor("c1", "n1"), 0);
        let status = view.status();
        assert_eq!(status.nodes().count(), 1, "c2/n1 left the mesh");
        assert_eq!(status.problems(), ["c1/n1: the relay cannot read it: down"]);
    }

    /// Rates are taken between two readings of an agent's counters, however
    /// often the relay asks in between.
    #[test]
    fn traffic_rates_span_two_readings() {
        let report = |forwarded: u64, at: f64| StatusReport {
            traffic: vec![Traffic {
                source_cluster: "c1".into(),
                destination_cluster: "c2".into(),
                forwarded_packets: forwarded,
                ..Traffic::default()
            }],
            traffic_read_unix: Some(at),
            ..StatusReport::default()
        };
        let mut view = View::new(10);
        let mut round = |report: StatusReport, now: f64| {
            let mut polled = polled("c1", "n1", Err("no flows".into()));
            polled.status = Ok(report);
            view.merge(vec![polled], now);
            view.map().edges.first().map(|edge| edge.packets_per_second)
        };
        assert_eq!(round(report(100, 10.0), 10.1), None, "one reading: no rate");
        assert_eq!(
            round(report(100, 10.0), 10.3),
            None,
            "the same reading again"
        );
        assert_eq!(round(report(160, 11.0), 11.2), Some(60.0));
        assert_eq!(
            round(report(160, 11.0), 11.4),
            Some(60.0),
            "kept until the next reading"
        );
        assert_eq!(round(report(160, 12.0), 12.1), Some(0.0));
    }
}
