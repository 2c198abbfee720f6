//! Prometheus gates in a run, still a pure function: [`due`] says which
//! query a run needs now (the controller asks Prometheus and hands the
//! reading back in the [`View`]), and [`judge`] records the reading in the
//! stage and decides the gate.

use crate::model::{
    Run, StageRun, StageState,
    prometheus::{Condition, Measurement, Outcome, Phase, PrometheusGate, Reading},
};

use super::View;

/// Measurements kept per stage, the oldest dropped first: enough for
/// `rollout status` to show the gate's history, bounded for etcd.
const KEPT: usize = 50;
/// Series shown per measurement.
const SHOWN: usize = 5;

/// A query the controller should make for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub run: u64,
    pub stage: usize,
    pub gate: usize,
    pub address: String,
    /// With `{{clusters}}` expanded.
    pub query: String,
}

/// The measurement `run` needs at `now`: its gating stage's current gate,
/// when that is a Prometheus gate with no measurement yet or whose last is
/// `interval` old, and not paused.
pub fn due(run: &Run, now: f64) -> Option<Due> {
    let (index, stage) = run
        .stages
        .iter()
        .enumerate()
        .find(|(_, stage)| stage.state != StageState::Completed)?;
    if stage.state != StageState::Gating || stage.paused.is_some() {
        return None;
    }
    let spec = run.strategy.stages.get(index)?;
    let Some(crate::model::Gate::Prometheus(gate)) = spec.gates.get(stage.gate) else {
        return None;
    };
    let last = taken(stage, stage.gate).last().map(|m| m.at_unix);
    if last.is_some_and(|at| now - at < gate.interval.0 as f64) {
        return None;
    }
    Some(Due {
        run: run.id,
        stage: index,
        gate: stage.gate,
        address: gate.address.clone(),
        query: gate.query_for(stage.clusters.iter().map(|c| c.name.as_str())),
    })
}

/// The reading the controller took for this gate, if any.
pub(super) fn reading(view: &View, run: u64, stage: usize, gate: usize) -> Option<&Reading> {
    view.readings.get(&(run, stage, gate))
}

/// Records `reading` (when the controller took one) and decides the gate:
/// `Ok(true)` once `count` measurements were judged with no more than
/// `failure-limit` failed, `Err` when it fails, `Ok(false)` meanwhile.
pub(super) fn judge(
    stage: &mut StageRun,
    index: usize,
    gate: &PrometheusGate,
    reading: Option<&Reading>,
    now: f64,
) -> Result<bool, String> {
    if stage.paused.is_some() {
        if !stage.approved {
            return Ok(false);
        }
        // Approved: the gate passes, and the approval is spent.
        stage.paused = None;
        stage.approved = false;
        return Ok(true);
    }
    let query = gate.query_for(stage.clusters.iter().map(|c| c.name.as_str()));
    let Some(reading) = reading else {
        return Ok(false);
    };
    let measurement = measure(index, gate, reading, now);
    let phase = measurement.phase;
    let detail = measurement.detail.clone().unwrap_or_default();
    let values = measurement.values.join(", ");
    stage.measurements.push(measurement);
    if stage.measurements.len() > KEPT {
        stage.measurements.remove(0);
    }
    let taken = taken(stage, index);
    let mut inconclusive = |outcome: Outcome, what: &str| -> Result<bool, String> {
        let why = format!("prometheus gate: {what} ({detail}); query {query}");
        match outcome {
            Outcome::Fail => Err(why),
            Outcome::Pause => {
                stage.paused = Some(format!(
                    "{why}; waiting for `fleetnet rollout approve` or `rollback`"
                ));
                Ok(false)
            }
            Outcome::Retry => {
                let in_a_row = taken
                    .iter()
                    .rev()
                    .take_while(|m| !matches!(m.phase, Phase::Successful | Phase::Failed))
                    .count();
                if in_a_row >= gate.retry_limit as usize {
                    Err(format!("{why}, {in_a_row} times in a row"))
                } else {
                    Ok(false)
                }
            }
        }
    };
    match phase {
        Phase::Unreachable => return inconclusive(gate.on_unreachable, "Prometheus unreachable"),
        Phase::Error => return inconclusive(gate.on_error, "query refused"),
        Phase::NoData => return inconclusive(gate.on_no_data, "no data"),
        Phase::Failed => {
            let failed = taken.iter().filter(|m| m.phase == Phase::Failed).count();
            if failed > gate.failure_limit as usize {
                return Err(format!(
                    "prometheus gate: query {query} returned {values}, where {} does not hold \
                     ({failed} failed measurement(s), failure-limit {})",
                    gate.success, gate.failure_limit
                ));
            }
        }
        Phase::Successful => {}
    }
    let judged = taken
        .iter()
        .filter(|m| matches!(m.phase, Phase::Successful | Phase::Failed))
        .count();
    Ok(judged >= gate.count as usize)
}

/// The measurements of gate `index` since it began.
fn taken(stage: &StageRun, index: usize) -> Vec<Measurement> {
    let since = stage.gate_started_unix.unwrap_or(f64::NEG_INFINITY);
    stage
        .measurements
        .iter()
        .filter(|m| m.gate == index && m.at_unix >= since)
        .cloned()
        .collect()
}

/// A reading judged against the gate's `success`.
fn measure(index: usize, gate: &PrometheusGate, reading: &Reading, now: f64) -> Measurement {
    let (phase, values, detail) = match reading {
        Reading::Unreachable(why) => (Phase::Unreachable, Vec::new(), Some(why.clone())),
        Reading::Error(why) => (Phase::Error, Vec::new(), Some(why.clone())),
        Reading::Values(series) => {
            let numbers: Vec<&(String, f64)> =
                series.iter().filter(|(_, value)| !value.is_nan()).collect();
            if numbers.is_empty() {
                let detail = if series.is_empty() {
                    "the query returned no series"
                } else {
                    "every series is NaN"
                };
                (Phase::NoData, Vec::new(), Some(detail.to_string()))
            } else {
                // Validated with the strategy; a condition that no longer
                // parses holds for nothing.
                let condition = Condition::parse(&gate.success).ok();
                let holds = |value: f64| condition.as_ref().is_some_and(|c| c.holds(value));
                let phase = if numbers.iter().all(|(_, value)| holds(*value)) {
                    Phase::Successful
                } else {
                    Phase::Failed
                };
                let mut values: Vec<String> = numbers
                    .iter()
                    .take(SHOWN)
                    .map(|(labels, value)| format!("{labels} {}", shown(*value)).trim().to_string())
                    .collect();
                if numbers.len() > SHOWN {
                    values.push(format!("and {} more", numbers.len() - SHOWN));
                }
                (phase, values, None)
            }
        }
    };
    Measurement {
        gate: index,
        at_unix: now,
        phase,
        values,
        detail,
    }
}

/// A value as `rollout status` shows it: at most 4 decimals, no trailing
/// zeros (Prometheus sends `107.47359999999999`).
fn shown(value: f64) -> String {
    let text = format!("{value:.4}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}
