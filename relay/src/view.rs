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
    /// Per agent (cluster, node): where its stream of flows was read to.
    cursors: HashMap<(String, String), Cursor>,
    status: BTreeMap<String, BTreeMap<String, NodeStatus>>,
    /// Per agent: its traffic's rates between its last two readings.
    edges: HashMap<(String, String), Vec<Edge>>,
    samples: HashMap<(String, String), Sample>,
    /// The fleet's rollouts, newest first.
    runs: Vec<Run>,
}

/// How far an agent's flows were read: its stream (which a restart
/// changes; 0 before the first page) and the `since` of its next page.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    stream: u64,
    next: u64,
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
            .map_or(0, |cursor| cursor.next)
    }

    /// Takes in a round over `cluster`'s agents read at `now` (Unix
    /// seconds): the flows new since its last round, oldest first, and
    /// every node's status and traffic. The cluster's nodes not in the
    /// round have left the mesh.
    pub fn merge_cluster(&mut self, cluster: &str, round: Vec<Polled>, now: f64) {
        let mut nodes = BTreeMap::new();
        let mut new_flows: Vec<FlowRecord> = Vec::new();
        for polled in round {
            let agent = (cluster.to_string(), polled.node.clone());
            if let Ok(page) = polled.flows {
                new_flows.extend(self.take_page(&agent, page));
            }
            let before = self
                .status
                .get(cluster)
                .and_then(|nodes| nodes.get(&polled.node));
            let node = match polled.status {
                Ok(report) => {
                    let edges = self.traffic_rates(&agent, &report);
                    self.edges.insert(agent.clone(), edges);
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
            nodes.insert(polled.node, node);
        }
        new_flows.sort_by_key(|flow| flow.time_ns);
        for flow in new_flows {
            self.flows.push(flow);
        }
        let gone = |agent: &(String, String)| agent.0 == cluster && !nodes.contains_key(&agent.1);
        self.cursors.retain(|agent, _| !gone(agent));
        self.samples.retain(|agent, _| !gone(agent));
        self.edges.retain(|agent, _| !gone(agent));
        self.status.insert(cluster.to_string(), nodes);
    }

    /// Forgets a cluster that left the mesh.
    pub fn remove_cluster(&mut self, cluster: &str) {
        self.status.remove(cluster);
        self.cursors.retain(|agent, _| agent.0 != cluster);
        self.samples.retain(|agent, _| agent.0 != cluster);
        self.edges.retain(|agent, _| agent.0 != cluster);
    }

    /// The flows of `page` not taken before, named `cluster/node` (node
    /// names repeat across clusters, as in Hubble Relay), and only those
    /// with an end in the agent's own cluster: an agent does not speak
    /// for the traffic of others.
    fn take_page(&mut self, agent: &(String, String), page: FlowPage) -> Vec<FlowRecord> {
        let (cluster, node) = agent;
        // The agent restarted: it numbers anew, and what it holds from
        // before `since` was not asked for. Read it from its start next
        // round. (An agent that names no stream is known restarted only
        // when it numbers below the cursor.)
        let restarted = self.cursors.get(agent).is_some_and(|cursor| {
            (cursor.stream != 0 && cursor.stream != page.stream) || page.next < cursor.next
        });
        if restarted {
            self.cursors.insert(agent.clone(), Cursor::default());
            return Vec::new();
        }
        self.cursors.insert(
            agent.clone(),
            Cursor {
                stream: page.stream,
                next: page.next,
            },
        );
        page.flows
            .into_iter()
            .filter(|flow| flow.source.cluster == *cluster || flow.destination.cluster == *cluster)
            .map(|mut flow| {
                flow.node = format!("{cluster}/{node}");
                flow
            })
            .collect()
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
                // An agent speaks for traffic to or from its own cluster.
                let edges: Vec<Edge> = previous
                    .map(|sample| map::rates(&sample.traffic, sample.at, &report.traffic, at))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|edge| edge.source == agent.0 || edge.destination == agent.0)
                    .collect();
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

    /// The newest `most` flows from `since` on.
    pub fn last_flows_since(&self, since: u64, most: usize) -> FlowPage {
        self.flows.last_since(since, most)
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
    use fleetnet_agent::observe::flows::FlowEnd;

    use super::*;

    /// Flows numbered `seqs` of stream `stream`, from cluster `cluster`.
    fn page(
        cluster: &str,
        stream: u64,
        seqs: std::ops::RangeInclusive<u64>,
        time: u64,
    ) -> FlowPage {
        FlowPage {
            next: seqs.end() + 1,
            stream,
            flows: seqs
                .map(|seq| FlowRecord {
                    seq,
                    time_ns: time + seq,
                    node: "n1".into(),
                    source: FlowEnd {
                        cluster: cluster.into(),
                        ..FlowEnd::default()
                    },
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
        view.merge_cluster(
            "c1",
            vec![polled("c1", "n1", Ok(page("c1", 7, 1..=2, 2000)))],
            1.0,
        );
        view.merge_cluster(
            "c2",
            vec![polled("c2", "n1", Ok(page("c2", 8, 1..=1, 1000)))],
            1.0,
        );
        let merged = view.flows_since(0);
        let names: Vec<&str> = merged.flows.iter().map(|f| f.node.as_str()).collect();
        assert_eq!(names, ["c1/n1", "c1/n1", "c2/n1"], "named cluster/node");
        assert_eq!(view.cursor("c1", "n1"), 3);
        // An agent that cannot be reached keeps its place; one cluster's
        // round leaves the other's alone.
        view.merge_cluster("c1", vec![polled("c1", "n1", Err("timeout".into()))], 2.0);
        assert_eq!(view.cursor("c1", "n1"), 3);
        assert_eq!(view.cursor("c2", "n1"), 2);
        // A flow with no end in the agent's cluster is not taken from it.
        view.merge_cluster(
            "c2",
            vec![polled("c2", "n1", Ok(page("c3", 8, 2..=2, 1000)))],
            2.0,
        );
        assert!(view.flows_since(merged.next).flows.is_empty());
        assert_eq!(view.cursor("c2", "n1"), 3);
        // A restarted agent (another stream) is read from its start next
        // round, however far its new numbering got.
        view.merge_cluster(
            "c1",
            vec![polled("c1", "n1", Ok(page("c1", 9, 3..=5, 5000)))],
            3.0,
        );
        assert_eq!(view.cursor("c1", "n1"), 0);
        view.merge_cluster(
            "c1",
            vec![polled("c1", "n1", Ok(page("c1", 9, 1..=5, 5000)))],
            4.0,
        );
        assert_eq!(view.flows_since(merged.next).flows.len(), 5);
        assert_eq!(view.cursor("c1", "n1"), 6);
        let status = view.status();
        assert_eq!(status.nodes().count(), 2);
        assert_eq!(
            status.problems()[0],
            "c1/n1: the relay cannot read it: down"
        );
        view.remove_cluster("c2");
        assert_eq!(view.status().nodes().count(), 1, "c2 left the mesh");
        assert_eq!(view.cursor("c2", "n1"), 0);
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
            view.merge_cluster("c1", vec![polled], now);
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
