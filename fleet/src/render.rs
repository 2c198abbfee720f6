//! Runs and revisions as `fleetnet rollout status` and `fleetnet fleet
//! revision` print them.

use std::fmt::Write;

use crate::model::{
    ClusterRun, ClusterState, Gate, Revision, Run, RunState, Stage, StageRun, StageState,
    prometheus::Phase,
};

/// `HH:MM:SS` (UTC) of a Unix time.
pub fn clock(unix: f64) -> String {
    let s = unix.max(0.0) as u64;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

pub fn lower(value: impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// One line per run.
pub fn runs_table(runs: &[Run]) -> String {
    let mut out = format!(
        "{:>4}  {:>8}  {:<20} {:<12} {:<9} {}\n",
        "RUN", "REVISION", "STRATEGY", "STATE", "STARTED", "WHERE"
    );
    for run in runs {
        let at = run
            .stages
            .iter()
            .find(|s| !matches!(s.state, StageState::Completed))
            .map_or("done".to_string(), |s| {
                format!("stage {} ({})", s.name, lower(s.state))
            });
        let _ = writeln!(
            out,
            "{:>4}  {:>8}  {:<20} {:<12} {:<9} {}",
            run.id,
            run.revision,
            run.strategy.name,
            lower(run.state),
            clock(run.created_unix),
            at
        );
    }
    out
}

/// A run in full: every stage, every cluster, and why.
pub fn run_text(run: &Run, now: f64, new_clusters: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}: revision {} with strategy {}: {}",
        run.id,
        run.revision,
        run.strategy.name,
        lower(run.state)
    );
    if let Some(reason) = &run.reason {
        let _ = writeln!(out, "  reason: {reason}");
    }
    let ended = run.ended_unix.map_or(String::new(), |e| {
        format!(", ended {} ({:.1} s)", clock(e), e - run.created_unix)
    });
    let _ = writeln!(out, "  started {}{ended}", clock(run.created_unix));
    for (stage, spec) in run.stages.iter().zip(&run.strategy.stages) {
        let took = match (stage.started_unix, stage.ended_unix) {
            (Some(start), Some(end)) => format!(" {:.1} s", end - start),
            (Some(start), None) => format!(" {:.1} s so far", now - start),
            _ => String::new(),
        };
        let _ = writeln!(out, "  stage {}: {}{took}", stage.name, lower(stage.state));
        if stage.state == StageState::Gating
            && let Some(gate) = spec.gates.get(stage.gate)
        {
            let since = stage.gate_started_unix.unwrap_or(now);
            let waiting = match gate {
                Gate::Wait { seconds } => format!(
                    "waiting {seconds} s ({:.1} s left)",
                    (since + *seconds as f64 - now).max(0.0)
                ),
                Gate::Approval {} if run.state == RunState::Running => format!(
                    "waiting for approval: fleetnet rollout approve {} --stage {}",
                    run.id, stage.name
                ),
                Gate::Approval {} => "waiting for approval".into(),
                Gate::Metric {
                    max_drop_ratio,
                    window_seconds,
                    ..
                } => format!(
                    "metric gate: {:.1} of {window_seconds} s watched, drops must stay at or below {:.1}%",
                    (now - since).min(*window_seconds as f64),
                    100.0 * max_drop_ratio
                ),
                Gate::Prometheus(gate) => match &stage.paused {
                    Some(why) => format!("paused: {why}"),
                    None => format!(
                        "prometheus gate: {} of {} measurement(s) every {} s, success when {}",
                        stage
                            .measurements
                            .iter()
                            .filter(|m| m.gate == stage.gate
                                && m.at_unix >= since
                                && matches!(m.phase, Phase::Successful | Phase::Failed))
                            .count(),
                        gate.count,
                        gate.interval.0,
                        gate.success
                    ),
                },
            };
            let _ = writeln!(
                out,
                "    gate {}/{}: {waiting}",
                stage.gate + 1,
                spec.gates.len()
            );
        }
        if let Some(reason) = &stage.reason {
            let _ = writeln!(out, "    reason: {reason}");
        }
        measurements(&mut out, stage, spec);
        for cluster in &stage.clusters {
            let _ = writeln!(out, "    {}", cluster_line(cluster));
        }
    }
    if !run.unselected.is_empty() {
        let _ = writeln!(out, "  in no stage: {}", run.unselected.join(", "));
    }
    if !new_clusters.is_empty() {
        let _ = writeln!(
            out,
            "  registered since the run started (not part of it): {}",
            new_clusters.join(", ")
        );
    }
    out
}

/// Measurements shown per stage, the latest.
const MEASUREMENTS_SHOWN: usize = 6;

/// A stage's latest Prometheus measurements: gate, query, outcome, values.
fn measurements(out: &mut String, stage: &StageRun, spec: &Stage) {
    let shown = stage.measurements.len().saturating_sub(MEASUREMENTS_SHOWN);
    let mut query_shown = None;
    for m in &stage.measurements[shown..] {
        if query_shown != Some(m.gate)
            && let Some(Gate::Prometheus(gate)) = spec.gates.get(m.gate)
        {
            let _ = writeln!(
                out,
                "    gate {} prometheus {}: {}  (success: {})",
                m.gate + 1,
                gate.address,
                gate.query,
                gate.success
            );
            query_shown = Some(m.gate);
        }
        let found = if m.values.is_empty() {
            m.detail.clone().unwrap_or_default()
        } else {
            m.values.join(", ")
        };
        let _ = writeln!(
            out,
            "      {} {:<11} {found}",
            clock(m.at_unix),
            lower(m.phase)
        );
    }
}

fn cluster_line(cluster: &ClusterRun) -> String {
    let mut line = format!("{:<16} {:<12}", cluster.name, lower(cluster.state));
    if let Some(start) = cluster.started_unix {
        let _ = write!(line, " {}", clock(start));
        if let Some(end) = cluster.ended_unix {
            let _ = write!(line, " -> {}", clock(end));
        }
        let previous = cluster
            .previous
            .map_or("none".to_string(), |r| r.to_string());
        let _ = write!(line, "  previous revision: {previous}");
    }
    if let Some(reason) = &cluster.reason {
        let _ = write!(line, "  ({reason})");
    }
    if let Some(waiting) = &cluster.waiting
        && cluster.state == ClusterState::Progressing
    {
        let _ = write!(line, "  (waiting: {waiting})");
    }
    line
}

pub fn revision_text(revision: &Revision) -> String {
    let mut out = format!(
        "revision {} created {}",
        revision.number,
        clock(revision.created_unix)
    );
    if !revision.description.is_empty() {
        let _ = write!(out, ": {}", revision.description);
    }
    out.push('\n');
    for policy in &revision.bundle.policies {
        let _ = writeln!(
            out,
            "  policy {}/{}",
            policy.metadata.namespace.as_deref().unwrap_or("default"),
            policy.metadata.name.as_deref().unwrap_or_default()
        );
    }
    let settings = &revision.bundle.settings;
    if let Some(n) = settings.forward_sample {
        let _ = writeln!(out, "  forward-sample: {n}");
    }
    if let Some(n) = settings.events_per_second {
        let _ = writeln!(out, "  events-per-second: {n}");
    }
    if let Some(agent) = &revision.bundle.agent {
        let _ = writeln!(out, "  agent image: {}", agent.image);
        for (key, value) in agent.settings.named() {
            if let Some(value) = value {
                let _ = writeln!(out, "  agent {key}: {value}");
            }
        }
    }
    out
}
