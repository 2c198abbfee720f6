//! The documents the fleet keyspace holds, as JSON with a version field:
//! what users write (a [`Bundle`], a [`Strategy`]) and what the system
//! keeps ([`Revision`], [`Run`], [`Target`], [`Report`]).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::NetworkPolicy, apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use serde::{Deserialize, Serialize};

use fleetnet_policy::{rules::Policy, selector::Selector};

pub mod agent;
pub mod prometheus;

pub use self::{
    agent::{AgentRunning, AgentSpec},
    prometheus::{Measurement, PrometheusGate},
};

pub const VERSION: u32 = 1;

/// What a mesh config revision carries: NetworkPolicies applied in every
/// cluster (besides each cluster's own) and dataplane settings. Applied
/// whole or not at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Bundle {
    #[serde(default)]
    pub policies: Vec<NetworkPolicy>,
    #[serde(default)]
    pub settings: LiveSettings,
    /// The agent itself: its image and restart-requiring settings, written
    /// into each cluster's agent DaemonSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

/// Dataplane settings an agent applies without a restart; unset keeps the
/// agent's own configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LiveSettings {
    /// `observe.forward-sample`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_sample: Option<u16>,
    /// `observe.events-per-second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<u32>,
}

impl Bundle {
    /// Every policy as `cluster` reads it, and the settings checked; the
    /// first problem found, as one sentence.
    pub fn validate(&self, cluster: &str) -> Result<Vec<Policy>, String> {
        if self.settings.events_per_second == Some(0) {
            return Err("settings.events-per-second must be at least 1".into());
        }
        if let Some(agent) = &self.agent {
            agent.validate()?;
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut policies = Vec::new();
        for (i, object) in self.policies.iter().enumerate() {
            let name = format!(
                "{}/{}",
                object.metadata.namespace.as_deref().unwrap_or("default"),
                object.metadata.name.as_deref().unwrap_or_default()
            );
            if object
                .metadata
                .name
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            {
                return Err(format!("policies[{i}] has no metadata.name"));
            }
            if !seen.insert(name.clone()) {
                return Err(format!("policies[{i}]: policy {name} appears twice"));
            }
            let mut policy = Policy::parse(object, cluster)
                .map_err(|error| format!("policy {name}: {error}"))?;
            // Kubernetes names cannot hold ':', so these never collide with
            // the cluster's own policies.
            policy.name = format!("fleet:{}", policy.name);
            policies.push(policy);
        }
        Ok(policies)
    }
}

/// An immutable, numbered bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Revision {
    pub v: u32,
    pub number: u64,
    pub created_unix: f64,
    #[serde(default)]
    pub description: String,
    pub bundle: Bundle,
}

/// How a revision travels: stages in order, each a group of clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Strategy {
    /// The document version; may be left out when writing one.
    #[serde(default = "current_version")]
    pub v: u32,
    pub name: String,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Stage {
    pub name: String,
    /// Over cluster labels (and `fleetnet.io/cluster`, the name). A
    /// cluster belongs to the first stage that selects it.
    pub selector: LabelSelector,
    /// Clusters go in the order of this label's value, then name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// Clusters changing at once: a count (`2`) or a share (`"50%"`).
    #[serde(default = "one")]
    pub max_concurrency: Concurrency,
    /// A cluster whose agents have not all applied the revision by then
    /// fails the stage.
    #[serde(default = "default_timeout")]
    pub cluster_timeout_seconds: u64,
    /// Checks after every cluster of the stage succeeded, in order. Each
    /// is a one-key map (`wait: { seconds: 5 }`), in YAML as in JSON.
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub gates: Vec<Gate>,
}

fn current_version() -> u32 {
    VERSION
}

fn one() -> Concurrency {
    Concurrency::Count(1)
}

fn default_timeout() -> u64 {
    120
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Concurrency {
    Count(u32),
    #[serde(with = "percent")]
    Percent(u32),
}

mod percent {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(value: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{value}%"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.strip_suffix('%')
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "{text:?} is not a count or a percentage like \"50%\""
                ))
            })
    }
}

impl Concurrency {
    /// Clusters at once in a stage of `clusters` (at least one).
    pub fn of(self, clusters: usize) -> usize {
        let n = match self {
            Concurrency::Count(n) => n as usize,
            Concurrency::Percent(p) => (clusters * p as usize).div_ceil(100),
        };
        n.max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Gate {
    /// Wait this long.
    Wait { seconds: u64 },
    /// Wait for `fleetnet rollout approve`.
    Approval {},
    /// Watch the stage's agents for a window: fail when more than
    /// `max-drop-ratio` of their packets are dropped, or (with
    /// `require-synced`) when one is not ready.
    Metric {
        max_drop_ratio: f64,
        window_seconds: u64,
        #[serde(default = "yes")]
        require_synced: bool,
    },
    /// Measure a PromQL query over the stage's clusters.
    Prometheus(PrometheusGate),
}

fn yes() -> bool {
    true
}

impl Strategy {
    /// The first problem with the strategy, as one sentence.
    pub fn validate(&self) -> Result<(), String> {
        if self.v != VERSION {
            return Err(format!(
                "strategy version {} is not one this build reads ({VERSION})",
                self.v
            ));
        }
        if self.name.is_empty() || self.name.contains('/') {
            return Err(format!(
                "strategy name {:?} must be non-empty, without '/'",
                self.name
            ));
        }
        if self.stages.is_empty() {
            return Err("a strategy needs at least one stage".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for stage in &self.stages {
            if !names.insert(&stage.name) {
                return Err(format!("stage {} appears twice", stage.name));
            }
            Selector::parse(&stage.selector)
                .map_err(|error| format!("stage {}: selector: {error}", stage.name))?;
            if matches!(
                stage.max_concurrency,
                Concurrency::Count(0) | Concurrency::Percent(0)
            ) {
                return Err(format!(
                    "stage {}: max-concurrency must be at least 1",
                    stage.name
                ));
            }
            if stage.cluster_timeout_seconds == 0 {
                return Err(format!(
                    "stage {}: cluster-timeout-seconds must be at least 1",
                    stage.name
                ));
            }
            for gate in &stage.gates {
                if let Gate::Prometheus(gate) = gate {
                    gate.validate()
                        .map_err(|error| format!("stage {}: {error}", stage.name))?;
                }
                if let Gate::Metric {
                    max_drop_ratio,
                    window_seconds,
                    ..
                } = gate
                    && (!(0.0..=1.0).contains(max_drop_ratio) || *window_seconds == 0)
                {
                    return Err(format!(
                        "stage {}: a metric gate needs max-drop-ratio between 0 and 1 and window-seconds of at least 1",
                        stage.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A revision rolled out with a strategy. Everything the controller needs
/// to go on after a restart lives here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Run {
    pub v: u32,
    pub id: u64,
    pub revision: u64,
    /// The strategy as it was when the run started.
    pub strategy: Strategy,
    pub state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_unix: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix: Option<f64>,
    pub stages: Vec<StageRun>,
    /// Clusters registered at the start that no stage selected.
    #[serde(default)]
    pub unselected: Vec<String>,
    /// The revision's agent, when it carries one: a cluster succeeds only
    /// once every node runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

impl Run {
    /// Whether the run's stages are its strategy's, one for one, as every
    /// run written by `rollout start` has them; a run that is not cannot
    /// be moved. The problem as one sentence.
    pub fn check(&self) -> Result<(), String> {
        let planned: Vec<&str> = self
            .strategy
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let stages: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        if planned != stages {
            return Err(format!(
                "run {} is damaged: its stages ({}) are not its strategy's ({}); \
                 delete its key and start a new run",
                self.id,
                stages.join(", "),
                planned.join(", ")
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    /// Paused by `rollout stop`; `rollout resume` goes on.
    Stopped,
    Completed,
    /// A cluster or gate failed: the stage was rolled back.
    Halted,
    /// `rollout rollback`: every cluster it changed is back.
    RolledBack,
}

impl RunState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::Halted | RunState::RolledBack
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StageRun {
    pub name: String,
    pub state: StageState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix: Option<f64>,
    pub clusters: Vec<ClusterRun>,
    /// Index of the gate being checked.
    #[serde(default)]
    pub gate: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_started_unix: Option<f64>,
    #[serde(default)]
    pub approved: bool,
    /// Each agent's first counters read at or after a metric gate began.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baseline: BTreeMap<String, Counters>,
    /// Prometheus gates' measurements, the latest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// Why a gate holds until `rollout approve` (a Prometheus gate whose
    /// outcome is `pause`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageState {
    Pending,
    Progressing,
    /// Every cluster succeeded; checking the gates.
    Gating,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterRun {
    pub name: String,
    pub state: ClusterState,
    /// The cluster's target revision before this run changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// While progressing: what it waits for (a node not on the revision,
    /// not running the revision's agent, not ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    Pending,
    Progressing,
    Succeeded,
    Failed,
    RolledBack,
}

/// Packets an agent forwarded and dropped since it started, and when it
/// read them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Counters {
    pub forwarded: u64,
    pub dropped: u64,
    /// Unix seconds of the reading (0: an agent older than this field).
    #[serde(default)]
    pub at_unix: f64,
}

/// The revision a cluster's agents should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Target {
    pub v: u32,
    pub revision: u64,
    pub run: u64,
}

/// What an agent reports, under its lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub v: u32,
    /// The revision in force (none: only the agent's own configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// The target it last saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    /// Why the target was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The agent is ready (synchronized with its source and the mesh).
    pub ready: bool,
    pub counters: Counters,
    /// The agent's version (`fleetnet --version`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Live connections from this node to each other cluster's backends
    /// (load-balanced connections in the conntrack table, by the backend's
    /// cluster): what `fleetnet cluster retire` waits on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connections_to: BTreeMap<String, u64>,
    /// Unix seconds of that count.
    #[serde(default)]
    pub connections_counted: f64,
    /// The image and restart settings it started with.
    #[serde(default)]
    pub agent: AgentRunning,
}

/// Documents larger than this are refused (etcd's own limit is 1.5 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub fn encode(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("fleet documents always serialize")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "a document of {} bytes is larger than the {MAX_DOCUMENT_BYTES}-byte limit",
            bytes.len()
        ));
    }
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    let versioned: Versioned = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if versioned.v != VERSION {
        return Err(format!(
            "document version {} is not one this build reads ({VERSION}); upgrade fleetnet",
            versioned.v
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRATEGY: &str = "
name: default
stages:
  - name: canary
    selector: { matchLabels: { env: canary } }
    order-by: ring
    gates:
      - wait: { seconds: 5 }
      - metric: { max-drop-ratio: 0.05, window-seconds: 10 }
  - name: prod
    selector: { matchExpressions: [ { key: env, operator: In, values: [prod] } ] }
    max-concurrency: 50%
    gates: [ { approval: {} } ]
";

    #[test]
    fn strategies_read_as_written() {
        let strategy: Strategy = serde_yaml::from_str(STRATEGY).unwrap();
        strategy.validate().unwrap();
        let canary = &strategy.stages[0];
        assert_eq!(canary.max_concurrency, Concurrency::Count(1));
        assert_eq!(canary.cluster_timeout_seconds, 120);
        assert_eq!(
            canary.gates[1],
            Gate::Metric {
                max_drop_ratio: 0.05,
                window_seconds: 10,
                require_synced: true
            }
        );
        let prod = &strategy.stages[1];
        assert_eq!(prod.max_concurrency, Concurrency::Percent(50));
        assert_eq!(prod.max_concurrency.of(5), 3);
        assert_eq!(Concurrency::Percent(10).of(3), 1);
        assert_eq!(prod.gates, [Gate::Approval {}]);
        // Stored and read back.
        let json = encode(&strategy);
        assert_eq!(serde_json::from_slice::<Strategy>(&json).unwrap(), strategy);
    }

    #[test]
    fn bad_strategies_and_bundles_are_one_sentence() {
        let mut strategy: Strategy = serde_yaml::from_str(STRATEGY).unwrap();
        strategy.stages[1].name = "canary".into();
        assert_eq!(
            strategy.validate().unwrap_err(),
            "stage canary appears twice"
        );
        let error = serde_yaml::from_str::<Strategy>(&STRATEGY.replace("50%", "half"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("max-concurrency") || error.contains("did not match"),
            "{error}"
        );

        let bundle: Bundle = serde_yaml::from_str(
            "policies:\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: { name: p, namespace: shop }\n    spec: { podSelector: { matchExpressions: [ { key: a, operator: Near, values: [b] } ] } }\n",
        )
        .unwrap();
        assert_eq!(
            bundle.validate("c1").unwrap_err(),
            "policy shop/p: spec.podSelector: matchExpressions on \"a\": unknown operator \"Near\" (use In, NotIn, Exists or DoesNotExist)"
        );
        let bundle: Bundle = serde_yaml::from_str("settings: { events-per-second: 0 }").unwrap();
        assert_eq!(
            bundle.validate("c1").unwrap_err(),
            "settings.events-per-second must be at least 1"
        );
        assert!(serde_yaml::from_str::<Bundle>("settings: { maglev: 7 }").is_err());
    }

    #[test]
    fn the_documented_examples_parse() {
        let docs = fleetnet_doc_check::doc("docs/rollouts.md");
        let examples = docs
            .split("```\n# bundle.yaml")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/rollouts.md has the bundle and strategy examples");
        let (bundle, strategy) = examples
            .split_once("# strategy.yaml")
            .expect("the strategy follows the bundle");
        // Each part starts with the rest of its comment line.
        let body = |part: &str| {
            part.split_once('\n')
                .map_or("", |(_, body)| body)
                .to_string()
        };
        let (bundle, strategy) = (body(bundle), body(strategy));
        let bundle: Bundle = serde_yaml::from_str(&bundle).unwrap();
        assert_eq!(bundle.validate("c1").unwrap().len(), 1);
        let strategy: Strategy = serde_yaml::from_str(&strategy).unwrap();
        strategy.validate().unwrap();
        assert_eq!(strategy.stages[1].max_concurrency, Concurrency::Percent(25));
    }

    #[test]
    fn the_documented_agent_upgrade_parses() {
        let docs = fleetnet_doc_check::doc("docs/rollouts.md");
        let block = |title: &str| {
            docs.split(&format!("```\n# {title}"))
                .nth(1)
                .and_then(|rest| rest.split("```").next())
                .and_then(|block| block.split_once('\n'))
                .map(|(_, body)| body.to_string())
                .unwrap_or_else(|| panic!("docs/rollouts.md has the {title} example"))
        };
        let bundle: Bundle = serde_yaml::from_str(&block("agent-0.2.0.yaml")).unwrap();
        bundle.validate("c1").unwrap();
        let agent = bundle.agent.unwrap();
        assert_eq!(agent.image, "ghcr.io/fleetnet/fleetnet:0.2.0");
        assert_eq!(agent.settings.bpf.ipcache_max_entries, Some(1_048_576));
        let strategy: Strategy = serde_yaml::from_str(&block("upgrade.yaml")).unwrap();
        strategy.validate().unwrap();
        let Gate::Prometheus(gate) = &strategy.stages[0].gates[0] else {
            panic!("the canary's gate is a Prometheus gate");
        };
        assert_eq!((gate.interval.0, gate.count), (30, 3));
        assert_eq!(gate.on_unreachable, prometheus::Outcome::Pause);
    }

    #[test]
    fn oversized_documents_are_refused_unread() {
        let huge = format!(
            r#"{{"v":1,"revision":3,"run":1,"padding":"{}"}}"#,
            "x".repeat(2 << 20)
        );
        assert_eq!(
            decode::<Target>(huge.as_bytes()).unwrap_err(),
            format!(
                "a document of {} bytes is larger than the 1048576-byte limit",
                huge.len()
            )
        );
    }

    #[test]
    fn documents_check_their_version() {
        let target = Target {
            v: VERSION,
            revision: 3,
            run: 1,
        };
        assert_eq!(decode::<Target>(&encode(&target)).unwrap(), target);
        assert_eq!(
            decode::<Target>(br#"{"v":2,"revision":3,"run":1}"#).unwrap_err(),
            "document version 2 is not one this build reads (1); upgrade fleetnet"
        );
    }
}
