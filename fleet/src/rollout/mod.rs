//! How a run moves: a pure function of the run and what the fleet
//! reports, returning the target changes to make. The controller stores
//! the run and makes the changes in one etcd transaction.
//!
//! A stage starts its clusters in order, at most `max-concurrency` at a
//! time; a cluster succeeds when every one of its publishing nodes reports
//! the revision applied and is ready, and fails when one rejects it or the
//! timeout passes. Once all succeeded the gates are checked in order. A
//! failure rolls the stage's clusters back to the revision each had before
//! and halts the run; later stages are never touched.

use std::collections::{BTreeMap, BTreeSet};

use fleetnet_policy::{
    identity::{CLUSTER_LABEL, Labels},
    selector::Selector,
};

pub mod prometheus;

use crate::model::{
    AgentSpec, ClusterRun, ClusterState, Counters, Gate, Report, Run, RunState, Stage, StageRun,
    StageState, Strategy, Target, VERSION, prometheus::Reading,
};

/// What the controller sees of the fleet.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Nodes publishing in the mesh, by cluster.
    pub nodes: BTreeMap<String, BTreeSet<String>>,
    /// Agents' reports by (cluster, node).
    pub reports: BTreeMap<(String, String), Report>,
    /// Each cluster's current target.
    pub targets: BTreeMap<String, Target>,
    /// Prometheus readings the controller took this pass, by (run, stage
    /// index, gate index): see [`prometheus::due`].
    pub readings: BTreeMap<(u64, usize, usize), Reading>,
}

/// A change to a cluster's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Set {
        cluster: String,
        target: Target,
    },
    /// Back to `previous` (no target: the agents' own configuration).
    Restore {
        cluster: String,
        previous: Option<u64>,
    },
}

/// A new run of `revision` with `strategy` over `clusters` (name and
/// labels), as they are now: each cluster joins the first stage selecting
/// it, in `order-by` order; the others are listed as unselected.
pub fn start(
    id: u64,
    revision: u64,
    strategy: &Strategy,
    clusters: &BTreeMap<String, Labels>,
    now: f64,
) -> Result<Run, String> {
    strategy.validate()?;
    let mut unassigned: BTreeMap<&String, Labels> = clusters
        .iter()
        .map(|(name, labels)| {
            let mut labels = labels.clone();
            labels.insert(CLUSTER_LABEL.into(), name.clone());
            (name, labels)
        })
        .collect();
    let mut stages = Vec::new();
    for stage in &strategy.stages {
        let selector =
            Selector::parse(&stage.selector).map_err(|e| format!("stage {}: {e}", stage.name))?;
        let mut members: Vec<(&String, Labels)> = unassigned
            .iter()
            .filter(|(_, labels)| selector.matches(labels))
            .map(|(name, labels)| (*name, labels.clone()))
            .collect();
        for (name, _) in &members {
            unassigned.remove(name);
        }
        if let Some(key) = &stage.order_by {
            members.sort_by(|(a, la), (b, lb)| (la.get(key), a).cmp(&(lb.get(key), b)));
        }
        stages.push(StageRun {
            name: stage.name.clone(),
            state: StageState::Pending,
            started_unix: None,
            ended_unix: None,
            clusters: members
                .into_iter()
                .map(|(name, _)| ClusterRun {
                    name: name.clone(),
                    state: ClusterState::Pending,
                    previous: None,
                    started_unix: None,
                    ended_unix: None,
                    reason: None,
                    waiting: None,
                })
                .collect(),
            gate: 0,
            gate_started_unix: None,
            approved: false,
            baseline: BTreeMap::new(),
            measurements: Vec::new(),
            paused: None,
            reason: None,
        });
    }
    if stages.iter().all(|stage| stage.clusters.is_empty()) {
        return Err(format!(
            "no registered cluster matches any stage of strategy {}",
            strategy.name
        ));
    }
    Ok(Run {
        v: VERSION,
        id,
        revision,
        strategy: strategy.clone(),
        state: RunState::Running,
        reason: None,
        created_unix: now,
        ended_unix: None,
        stages,
        unselected: unassigned.keys().map(|name| name.to_string()).collect(),
        agent: None,
    })
}

/// Moves a running run as far as `view` allows at `now`.
pub fn advance(run: &mut Run, view: &View, now: f64) -> Vec<Action> {
    let mut actions = Vec::new();
    if run.state != RunState::Running {
        return actions;
    }
    for index in 0..run.stages.len() {
        // A run whose stages are not its strategy's (see `Run::check`,
        // which the store applies) is not moved.
        let Some(spec) = run.strategy.stages.get(index).cloned() else {
            return actions;
        };
        let revision = (run.revision, run.id);
        let agent = run.agent.clone();
        let stage = &mut run.stages[index];
        match stage.state {
            StageState::Completed => continue,
            StageState::Failed => return actions,
            StageState::Pending => {
                stage.state = StageState::Progressing;
                stage.started_unix = Some(now);
            }
            StageState::Progressing | StageState::Gating => {}
        }
        if stage.state == StageState::Progressing {
            let wanted = Wanted {
                revision,
                agent: agent.as_ref(),
            };
            if let Err(reason) = progress(stage, &spec, view, wanted, now, &mut actions) {
                fail(run, index, reason, now, &mut actions);
                return actions;
            }
            if stage.state == StageState::Progressing {
                return actions;
            }
        }
        match check_gates(stage, &spec, view, now, (run.id, index)) {
            Ok(true) => {
                stage.state = StageState::Completed;
                stage.ended_unix = Some(now);
            }
            Ok(false) => return actions,
            Err(reason) => {
                fail(run, index, reason, now, &mut actions);
                return actions;
            }
        }
    }
    run.state = RunState::Completed;
    run.ended_unix = Some(now);
    actions
}

/// Settles the stage's clusters and starts more; `Err` when one failed.
/// What a stage's clusters should run: (revision, run) and the agent.
struct Wanted<'a> {
    revision: (u64, u64),
    agent: Option<&'a AgentSpec>,
}

fn progress(
    stage: &mut StageRun,
    spec: &Stage,
    view: &View,
    wanted: Wanted<'_>,
    now: f64,
    actions: &mut Vec<Action>,
) -> Result<(), String> {
    let (revision, run) = wanted.revision;
    for cluster in &mut stage.clusters {
        if cluster.state != ClusterState::Progressing {
            continue;
        }
        let started = cluster.started_unix.unwrap_or(now);
        match applied(view, &cluster.name, revision, wanted.agent) {
            Ok(()) => {
                cluster.state = ClusterState::Succeeded;
                cluster.ended_unix = Some(now);
                cluster.waiting = None;
            }
            Err(Waiting::Rejected(reason)) => {
                cluster.state = ClusterState::Failed;
                cluster.ended_unix = Some(now);
                cluster.reason = Some(reason.clone());
                cluster.waiting = None;
                return Err(format!("cluster {}: {reason}", cluster.name));
            }
            Err(Waiting::Pending(detail))
                if now - started > spec.cluster_timeout_seconds as f64 =>
            {
                let reason = format!(
                    "not applied within {} s: {detail}",
                    spec.cluster_timeout_seconds
                );
                cluster.state = ClusterState::Failed;
                cluster.ended_unix = Some(now);
                cluster.reason = Some(reason.clone());
                cluster.waiting = None;
                return Err(format!("cluster {}: {reason}", cluster.name));
            }
            Err(Waiting::Pending(detail)) => cluster.waiting = Some(detail),
        }
    }
    let limit = spec.max_concurrency.of(stage.clusters.len());
    let mut in_flight = stage
        .clusters
        .iter()
        .filter(|c| c.state == ClusterState::Progressing)
        .count();
    for cluster in &mut stage.clusters {
        if in_flight >= limit {
            break;
        }
        if cluster.state != ClusterState::Pending {
            continue;
        }
        cluster.previous = view.targets.get(&cluster.name).map(|t| t.revision);
        cluster.state = ClusterState::Progressing;
        cluster.started_unix = Some(now);
        actions.push(Action::Set {
            cluster: cluster.name.clone(),
            target: Target {
                v: VERSION,
                revision,
                run,
            },
        });
        in_flight += 1;
    }
    if stage
        .clusters
        .iter()
        .all(|c| c.state == ClusterState::Succeeded)
    {
        stage.state = StageState::Gating;
        stage.gate = 0;
        stage.gate_started_unix = Some(now);
    }
    Ok(())
}

enum Waiting {
    Pending(String),
    Rejected(String),
}

/// Whether every publishing node of `cluster` runs `revision` (and its
/// `agent`) and is ready.
fn applied(
    view: &View,
    cluster: &str,
    revision: u64,
    agent: Option<&AgentSpec>,
) -> Result<(), Waiting> {
    let nodes = view.nodes.get(cluster).filter(|nodes| !nodes.is_empty());
    let Some(nodes) = nodes else {
        return Err(Waiting::Pending("no node of the cluster publishes".into()));
    };
    for node in nodes {
        let Some(report) = view.reports.get(&(cluster.to_string(), node.clone())) else {
            return Err(Waiting::Pending(format!("node {node} has not reported")));
        };
        if report.target == Some(revision)
            && let Some(error) = &report.error
        {
            return Err(Waiting::Rejected(format!(
                "node {node} rejected revision {revision}: {error}"
            )));
        }
        if report.applied != Some(revision) {
            let on = report
                .applied
                .map_or("no revision".to_string(), |r| format!("revision {r}"));
            return Err(Waiting::Pending(format!("node {node} is on {on}")));
        }
        if let Some(lacks) = agent.and_then(|agent| report.agent.lacks(agent)) {
            return Err(Waiting::Pending(format!("node {node} {lacks}")));
        }
        if !report.ready {
            return Err(Waiting::Pending(format!("node {node} is not ready")));
        }
    }
    Ok(())
}

/// `Ok(true)` once every gate passed, `Ok(false)` while one waits.
fn check_gates(
    stage: &mut StageRun,
    spec: &Stage,
    view: &View,
    now: f64,
    (run, index): (u64, usize),
) -> Result<bool, String> {
    while let Some(gate) = spec.gates.get(stage.gate) {
        let since = stage.gate_started_unix.unwrap_or(now);
        let passed = match gate {
            Gate::Wait { seconds } => now - since >= *seconds as f64,
            Gate::Approval {} => stage.approved,
            Gate::Metric {
                max_drop_ratio,
                window_seconds,
                require_synced,
            } => drop_ratio_within(
                stage,
                view,
                (*max_drop_ratio, *window_seconds, *require_synced),
                since,
                now,
            )?,
            Gate::Prometheus(gate) => {
                let reading = prometheus::reading(view, run, index, stage.gate);
                prometheus::judge(stage, stage.gate, gate, reading, now)?
            }
        };
        if !passed {
            return Ok(false);
        }
        stage.gate += 1;
        stage.gate_started_unix = Some(now);
        stage.baseline.clear();
    }
    Ok(true)
}

/// How long a metric gate waits past its window for an agent's first
/// counters read after the gate began, before it fails.
const FIRST_READING_GRACE_SECONDS: f64 = 30.0;

/// The metric gate: `Ok(true)` once every agent of the stage was watched
/// for the whole window with at most `max_drop_ratio` of its packets
/// dropped, `Ok(false)` while the window is not yet covered.
///
/// Each agent's baseline is the first counters it read at or after the
/// gate began (`since`), never an earlier report: drops from before the
/// gate (during a preceding wait gate, say) are not charged to it. The
/// window judged is the shortest any agent covered since its baseline,
/// and nothing is judged before it reaches `window_seconds`.
fn drop_ratio_within(
    stage: &mut StageRun,
    view: &View,
    (max_drop_ratio, window_seconds, require_synced): (f64, u64, bool),
    since: f64,
    now: f64,
) -> Result<bool, String> {
    let agents = stage_agents(stage, view);
    if require_synced
        && let Some(agent) = agents
            .iter()
            .find(|(_, report)| !report.is_some_and(|r| r.ready))
    {
        return Err(format!(
            "metric gate: agent {} is not synchronized",
            agent.0
        ));
    }
    let mut unread = Vec::new();
    for (agent, report) in &agents {
        if stage.baseline.contains_key(agent) {
            continue;
        }
        match report {
            Some(report) if report.counters.at_unix >= since => {
                stage.baseline.insert(agent.clone(), report.counters);
            }
            // An agent older than reading times: its counters as first
            // seen, at the controller's time.
            Some(report) if report.counters.at_unix == 0.0 => {
                let counters = Counters {
                    at_unix: now,
                    ..report.counters
                };
                stage.baseline.insert(agent.clone(), counters);
            }
            _ => unread.push(agent.as_str()),
        }
    }
    if let Some(agent) = unread.first() {
        if now - since > window_seconds as f64 + FIRST_READING_GRACE_SECONDS {
            return Err(format!(
                "metric gate: agent {agent} has reported no counters since the gate began {:.0} s ago",
                now - since
            ));
        }
        return Ok(false);
    }
    let (mut forwarded, mut dropped) = (0, 0);
    let mut covered = f64::INFINITY;
    for (agent, report) in &agents {
        let mut now_counters = report.map(|r| r.counters).unwrap_or_default();
        if now_counters.at_unix == 0.0 {
            now_counters.at_unix = now;
        }
        let base = stage.baseline.get(agent).copied().unwrap_or_default();
        covered = covered.min(now_counters.at_unix - base.at_unix);
        // An agent that restarted counts from zero again.
        let delta = |now: u64, base: u64| now.checked_sub(base).unwrap_or(now);
        // Reports come from every agent: saturate rather than overflow on
        // absurd counters.
        forwarded = u64::saturating_add(forwarded, delta(now_counters.forwarded, base.forwarded));
        dropped = u64::saturating_add(dropped, delta(now_counters.dropped, base.dropped));
    }
    if agents.is_empty() || covered < window_seconds as f64 {
        return Ok(false);
    }
    let total = forwarded.saturating_add(dropped);
    let ratio = if total == 0 {
        0.0
    } else {
        dropped as f64 / total as f64
    };
    if ratio > max_drop_ratio {
        return Err(format!(
            "metric gate: {dropped} of {total} packets dropped ({:.1}%) in {covered:.0} s, above {:.1}%",
            100.0 * ratio,
            100.0 * max_drop_ratio
        ));
    }
    Ok(true)
}

/// `cluster/node` and its report, for every node of the stage's clusters.
fn stage_agents<'a>(stage: &StageRun, view: &'a View) -> Vec<(String, Option<&'a Report>)> {
    let mut agents = Vec::new();
    for cluster in &stage.clusters {
        for node in view.nodes.get(&cluster.name).into_iter().flatten() {
            let report = view.reports.get(&(cluster.name.clone(), node.clone()));
            agents.push((format!("{}/{node}", cluster.name), report));
        }
    }
    agents
}

/// Fails stage `index`: its clusters go back, the run halts.
fn fail(run: &mut Run, index: usize, reason: String, now: f64, actions: &mut Vec<Action>) {
    let stage = &mut run.stages[index];
    stage.state = StageState::Failed;
    stage.ended_unix = Some(now);
    stage.reason = Some(reason.clone());
    restore(stage, now, actions);
    run.state = RunState::Halted;
    run.ended_unix = Some(now);
    run.reason = Some(format!(
        "stage {}: {reason}; its clusters were rolled back",
        stage.name
    ));
}

/// Every cluster of the stage this run changed goes back to its previous
/// target.
fn restore(stage: &mut StageRun, now: f64, actions: &mut Vec<Action>) {
    for cluster in &mut stage.clusters {
        if matches!(
            cluster.state,
            ClusterState::Progressing | ClusterState::Succeeded | ClusterState::Failed
        ) {
            actions.push(Action::Restore {
                cluster: cluster.name.clone(),
                previous: cluster.previous,
            });
            cluster.state = ClusterState::RolledBack;
            cluster.ended_unix = Some(now);
        }
    }
}

/// `rollout rollback`: every cluster the run changed goes back.
pub fn roll_back(run: &mut Run, now: f64) -> Vec<Action> {
    let mut actions = Vec::new();
    for stage in &mut run.stages {
        restore(stage, now, &mut actions);
        if !matches!(
            stage.state,
            StageState::Pending | StageState::Completed | StageState::Failed
        ) {
            stage.state = StageState::Failed;
            stage.ended_unix = Some(now);
        }
    }
    run.state = RunState::RolledBack;
    run.ended_unix = Some(now);
    run.reason = Some("rolled back on request".into());
    actions
}

/// `rollout resume`: timeouts and gate windows count from now again.
pub fn resume(run: &mut Run, now: f64) {
    run.state = RunState::Running;
    for stage in &mut run.stages {
        if stage.gate_started_unix.is_some() {
            stage.gate_started_unix = Some(now);
            stage.baseline.clear();
        }
        for cluster in &mut stage.clusters {
            if cluster.state == ClusterState::Progressing {
                cluster.started_unix = Some(now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
