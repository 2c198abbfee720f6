//! The rollout state machine over a fleet of six clusters in three stages,
//! with the agents' reports written by hand.

use super::*;
use crate::model::prometheus::Reading;
use crate::model::{Concurrency, Counters};

const REVISION: u64 = 7;
const RUN: u64 = 1;

fn strategy() -> Strategy {
    serde_yaml::from_str(
        "
name: three-stages
stages:
  - name: canary
    selector: { matchLabels: { env: canary } }
    order-by: ring
    cluster-timeout-seconds: 30
    gates:
      - wait: { seconds: 5 }
      - metric: { max-drop-ratio: 0.05, window-seconds: 10 }
  - name: staging
    selector: { matchLabels: { env: staging } }
    max-concurrency: 50%
    gates: [ { approval: {} } ]
  - name: prod
    selector: { matchLabels: { env: prod } }
    max-concurrency: 2
",
    )
    .unwrap()
}

/// c1..c6: two per environment; c1 is ring 2 and c2 ring 1 (so c2 goes
/// first), c7 matches no stage.
fn clusters() -> BTreeMap<String, Labels> {
    let labels = |env: &str, ring: &str| {
        Labels::from([("env".into(), env.into()), ("ring".into(), ring.into())])
    };
    BTreeMap::from([
        ("c1".into(), labels("canary", "2")),
        ("c2".into(), labels("canary", "1")),
        ("c3".into(), labels("staging", "1")),
        ("c4".into(), labels("staging", "1")),
        ("c5".into(), labels("prod", "1")),
        ("c6".into(), labels("prod", "1")),
        ("c7".into(), labels("lab", "1")),
    ])
}

/// One node per cluster; c1 and c3 ran revision 3 before.
fn view() -> View {
    let mut view = View::default();
    for cluster in clusters().keys() {
        view.nodes
            .insert(cluster.clone(), BTreeSet::from(["n1".to_string()]));
        report(&mut view, cluster, None, 0, 0);
    }
    for cluster in ["c1", "c3"] {
        view.targets.insert(
            cluster.into(),
            Target {
                v: VERSION,
                revision: 3,
                run: 0,
            },
        );
    }
    view
}

/// A report whose counters were read at the run's start (0.5).
fn report(view: &mut View, cluster: &str, applied: Option<u64>, forwarded: u64, dropped: u64) {
    counted(view, cluster, applied, (forwarded, dropped), 0.5);
}

/// A report whose counters were read at `at_unix`.
fn counted(
    view: &mut View,
    cluster: &str,
    applied: Option<u64>,
    (forwarded, dropped): (u64, u64),
    at_unix: f64,
) {
    view.reports.insert(
        (cluster.into(), "n1".into()),
        Report {
            v: VERSION,
            applied,
            target: applied,
            error: None,
            ready: true,
            counters: Counters {
                forwarded,
                dropped,
                at_unix,
            },
            ..Report::default()
        },
    );
}

/// Applies the actions to the view, as etcd and the agents would.
fn obey(view: &mut View, actions: &[Action]) {
    for action in actions {
        match action {
            Action::Set { cluster, target } => {
                view.targets.insert(cluster.clone(), *target);
                report(view, cluster, Some(target.revision), 0, 0);
            }
            Action::Restore { cluster, previous } => {
                match previous {
                    Some(revision) => view.targets.insert(
                        cluster.clone(),
                        Target {
                            v: VERSION,
                            revision: *revision,
                            run: 0,
                        },
                    ),
                    None => view.targets.remove(cluster),
                };
                report(view, cluster, *previous, 0, 0);
            }
        }
    }
}

fn set(clusters: &[&str]) -> Vec<Action> {
    clusters
        .iter()
        .map(|cluster| Action::Set {
            cluster: cluster.to_string(),
            target: Target {
                v: VERSION,
                revision: REVISION,
                run: RUN,
            },
        })
        .collect()
}

fn states(run: &Run) -> Vec<(String, ClusterState)> {
    run.stages
        .iter()
        .flat_map(|stage| &stage.clusters)
        .map(|cluster| (cluster.name.clone(), cluster.state))
        .collect()
}

#[test]
fn a_good_revision_goes_through_every_stage_in_order() {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    assert_eq!(run.unselected, ["c7"]);
    let canary: Vec<&str> = run.stages[0]
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(canary, ["c2", "c1"], "ordered by ring");
    let mut view = view();

    // Canary, one at a time.
    let actions = advance(&mut run, &view, 1.0);
    assert_eq!(actions, set(&["c2"]));
    assert!(
        advance(&mut run, &view, 2.0).is_empty(),
        "c2 has not applied yet"
    );
    obey(&mut view, &actions);
    let actions = advance(&mut run, &view, 3.0);
    assert_eq!(actions, set(&["c1"]));
    assert_eq!(run.stages[0].clusters[1].previous, Some(3));
    obey(&mut view, &actions);
    assert!(advance(&mut run, &view, 4.0).is_empty());
    assert_eq!(run.stages[0].state, StageState::Gating);

    // The wait gate, then the metric gate over 10 s of clean traffic.
    assert!(advance(&mut run, &view, 8.0).is_empty());
    assert_eq!(run.stages[0].gate, 0, "5 s have not passed");
    advance(&mut run, &view, 9.5);
    assert_eq!(run.stages[0].gate, 1);
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (1000, 3), 10.0);
    }
    advance(&mut run, &view, 10.5);
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (2000, 6), 15.0);
    }
    advance(&mut run, &view, 15.5);
    assert_eq!(
        run.stages[0].state,
        StageState::Gating,
        "the window is 10 s"
    );
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (3000, 9), 20.0);
    }
    let actions = advance(&mut run, &view, 20.5);
    assert_eq!(run.stages[0].state, StageState::Completed);

    // Staging: 50% of 2 is one at a time; later stages untouched so far.
    assert_eq!(actions, set(&["c3"]));
    assert!(!view.targets.contains_key("c5"));
    obey(&mut view, &actions);
    let actions = advance(&mut run, &view, 21.0);
    assert_eq!(actions, set(&["c4"]));
    obey(&mut view, &actions);
    assert!(advance(&mut run, &view, 22.0).is_empty());
    assert_eq!(
        run.stages[1].state,
        StageState::Gating,
        "waiting for approval"
    );
    assert!(
        advance(&mut run, &view, 500.0).is_empty(),
        "no approval, no progress"
    );
    run.stages[1].approved = true;

    // Prod: two at once, no gates.
    let actions = advance(&mut run, &view, 501.0);
    assert_eq!(actions, set(&["c5", "c6"]));
    obey(&mut view, &actions);
    advance(&mut run, &view, 502.0);
    assert_eq!(run.state, RunState::Completed);
    assert!(
        states(&run)
            .iter()
            .all(|(_, s)| *s == ClusterState::Succeeded)
    );
}

#[test]
fn a_revision_that_drops_traffic_halts_at_the_first_stage_and_rolls_it_back() {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    let mut view = view();
    for now in [1.0, 2.0, 3.0] {
        let actions = advance(&mut run, &view, now);
        obey(&mut view, &actions);
    }
    advance(&mut run, &view, 9.0);
    advance(&mut run, &view, 10.0);
    assert_eq!(run.stages[0].gate, 1, "on the metric gate");
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (0, 0), 10.0);
    }
    advance(&mut run, &view, 11.0);
    counted(&mut view, "c1", Some(REVISION), (0, 0), 20.0);
    counted(&mut view, "c2", Some(REVISION), (100, 400), 20.0);
    let actions = advance(&mut run, &view, 20.5);
    assert_eq!(run.state, RunState::Halted);
    assert_eq!(
        actions,
        [
            Action::Restore {
                cluster: "c2".into(),
                previous: None
            },
            Action::Restore {
                cluster: "c1".into(),
                previous: Some(3)
            }
        ]
    );
    assert_eq!(
        run.reason.as_deref(),
        Some(
            "stage canary: metric gate: 400 of 500 packets dropped (80.0%) in 10 s, above 5.0%; \
             its clusters were rolled back"
        )
    );
    assert!(
        run.stages[1..]
            .iter()
            .flat_map(|s| &s.clusters)
            .all(|c| c.state == ClusterState::Pending),
        "later stages untouched"
    );
    assert!(
        advance(&mut run, &view, 13.0).is_empty(),
        "a halted run stays"
    );
}

#[test]
fn a_rejected_or_stuck_revision_fails_its_cluster() {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    let mut view = view();
    advance(&mut run, &view, 1.0);
    view.reports.insert(
        ("c2".into(), "n1".into()),
        Report {
            v: VERSION,
            applied: None,
            target: Some(REVISION),
            error: Some("policy shop/p: bad".into()),
            ready: true,
            counters: Counters::default(),
            ..Report::default()
        },
    );
    let actions = advance(&mut run, &view, 2.0);
    assert_eq!(run.state, RunState::Halted);
    assert_eq!(actions.len(), 1);
    assert_eq!(
        run.stages[0].clusters[0].reason.as_deref(),
        Some("node n1 rejected revision 7: policy shop/p: bad")
    );

    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    let view = self::view();
    advance(&mut run, &view, 1.0);
    assert!(
        advance(&mut run, &view, 30.0).is_empty(),
        "within the timeout"
    );
    advance(&mut run, &view, 31.5);
    assert_eq!(run.state, RunState::Halted);
    assert_eq!(
        run.stages[0].clusters[0].reason.as_deref(),
        Some("not applied within 30 s: node n1 is on no revision")
    );
}

/// Through the canary's wait gate (5 s from 4.0) onto its metric gate
/// (10 s), which begins at 9.5.
fn on_the_metric_gate() -> (Run, View) {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    let mut view = view();
    for now in [1.0, 3.0, 4.0, 9.5] {
        let actions = advance(&mut run, &view, now);
        obey(&mut view, &actions);
    }
    assert_eq!(run.stages[0].gate, 1, "on the metric gate");
    assert_eq!(run.stages[0].gate_started_unix, Some(9.5));
    (run, view)
}

#[test]
fn drops_read_before_the_metric_gate_began_are_not_charged_to_it() {
    let (mut run, mut view) = on_the_metric_gate();
    // The last reports before the gate: c2 dropped during the wait gate.
    counted(&mut view, "c1", Some(REVISION), (100, 0), 8.0);
    counted(&mut view, "c2", Some(REVISION), (100, 400), 8.0);
    advance(&mut run, &view, 10.0);
    assert!(run.stages[0].baseline.is_empty(), "no reading since 9.5");
    // From the gate on, nothing more is dropped.
    counted(&mut view, "c1", Some(REVISION), (100, 0), 10.5);
    counted(&mut view, "c2", Some(REVISION), (100, 400), 10.5);
    advance(&mut run, &view, 11.0);
    counted(&mut view, "c1", Some(REVISION), (900, 0), 20.5);
    counted(&mut view, "c2", Some(REVISION), (900, 400), 20.5);
    advance(&mut run, &view, 21.0);
    assert_eq!(run.state, RunState::Running, "{:?}", run.reason);
    assert_eq!(run.stages[0].state, StageState::Completed);
}

#[test]
fn a_window_shorter_than_asked_is_never_judged() {
    let (mut run, mut view) = on_the_metric_gate();
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (0, 0), 9.5);
    }
    advance(&mut run, &view, 10.0);
    // Every packet dropped, but over 2 s of a 10 s window: not judged yet.
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (0, 56), 11.5);
    }
    advance(&mut run, &view, 12.0);
    assert_eq!(run.state, RunState::Running);
    // c2's newer reading covers the window, c1's does not: still waiting.
    counted(&mut view, "c2", Some(REVISION), (0, 112), 19.5);
    advance(&mut run, &view, 20.0);
    assert_eq!(run.state, RunState::Running);
    counted(&mut view, "c1", Some(REVISION), (0, 112), 19.5);
    advance(&mut run, &view, 20.0);
    assert_eq!(run.state, RunState::Halted);
    assert_eq!(
        run.stages[0].reason.as_deref(),
        Some("metric gate: 224 of 224 packets dropped (100.0%) in 10 s, above 5.0%")
    );
}

#[test]
fn agents_older_than_reading_times_are_counted_from_when_first_seen() {
    let (mut run, mut view) = on_the_metric_gate();
    // Reports without `at-unix`, as agents before it write them.
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (100, 1), 0.0);
    }
    advance(&mut run, &view, 10.0);
    assert_eq!(run.stages[0].baseline["c1/n1"].at_unix, 10.0);
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (1000, 2), 0.0);
    }
    advance(&mut run, &view, 15.0);
    assert_eq!(run.stages[0].state, StageState::Gating, "5 s of 10");
    advance(&mut run, &view, 20.0);
    assert_eq!(
        run.stages[0].state,
        StageState::Completed,
        "{:?}",
        run.reason
    );
}

#[test]
fn an_agent_that_never_reports_during_the_metric_gate_fails_it() {
    let (mut run, mut view) = on_the_metric_gate();
    counted(&mut view, "c1", Some(REVISION), (0, 0), 10.0);
    advance(&mut run, &view, 40.0);
    assert_eq!(run.state, RunState::Running, "within window and grace");
    advance(&mut run, &view, 50.0);
    assert_eq!(run.state, RunState::Halted);
    assert_eq!(
        run.stages[0].reason.as_deref(),
        Some("metric gate: agent c2/n1 has reported no counters since the gate began 40 s ago")
    );
}

#[test]
fn stop_resume_and_rollback() {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    let mut view = view();
    let actions = advance(&mut run, &view, 1.0);
    obey(&mut view, &actions);
    run.state = RunState::Stopped;
    assert!(
        advance(&mut run, &view, 2.0).is_empty(),
        "a stopped run waits"
    );
    resume(&mut run, 100.0);
    let actions = advance(&mut run, &view, 101.0);
    assert_eq!(
        actions,
        set(&["c1"]),
        "resumed where it stopped, no timeout"
    );
    obey(&mut view, &actions);

    let actions = roll_back(&mut run, 102.0);
    assert_eq!(run.state, RunState::RolledBack);
    assert_eq!(actions.len(), 2);
    obey(&mut view, &actions);
    assert_eq!(view.targets.get("c1").map(|t| t.revision), Some(3));
    assert!(!view.targets.contains_key("c2"));
}

#[test]
fn shares_round_up_and_a_strategy_matching_nothing_is_refused() {
    assert_eq!(Concurrency::Percent(34).of(3), 2);
    let mut lab = strategy();
    lab.stages.truncate(1);
    lab.stages[0].selector = serde_yaml::from_str("{ matchLabels: { env: mars } }").unwrap();
    assert_eq!(
        start(RUN, REVISION, &lab, &clusters(), 0.0).unwrap_err(),
        "no registered cluster matches any stage of strategy three-stages"
    );
}

#[test]
fn absurd_counters_in_reports_saturate_instead_of_overflowing() {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    let mut view = view();
    for now in [1.0, 2.0, 3.0, 9.0, 10.0] {
        let actions = advance(&mut run, &view, now);
        obey(&mut view, &actions);
    }
    assert_eq!(run.stages[0].gate, 1, "on the metric gate");
    for cluster in ["c1", "c2"] {
        counted(&mut view, cluster, Some(REVISION), (0, 0), 10.0);
    }
    advance(&mut run, &view, 10.5);
    for cluster in ["c1", "c2"] {
        counted(
            &mut view,
            cluster,
            Some(REVISION),
            (u64::MAX, u64::MAX),
            20.0,
        );
    }
    advance(&mut run, &view, 20.5);
    assert_eq!(run.state, RunState::Halted, "{:?}", run.reason);
    assert!(
        run.reason.as_deref().unwrap().contains(&format!(
            "{} of {} packets dropped",
            u64::MAX,
            u64::MAX
        )),
        "{:?}",
        run.reason
    );
}

#[test]
fn a_run_whose_stages_are_not_its_strategys_is_refused_and_not_moved() {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    run.check().unwrap();
    run.strategy.stages.pop();
    assert_eq!(
        run.check().unwrap_err(),
        "run 1 is damaged: its stages (canary, staging, prod) are not its strategy's \
         (canary, staging); delete its key and start a new run"
    );
    // Moved anyway, it goes as far as its strategy goes, and no further.
    run.stages[0].state = StageState::Completed;
    run.stages[1].state = StageState::Completed;
    assert!(advance(&mut run, &view(), 1.0).is_empty());
    assert_eq!(run.state, RunState::Running);
    assert_eq!(run.stages[2].state, StageState::Pending);
}

/// The canary with one Prometheus gate (`gate`, YAML), on it from 4.0.
fn on_a_prometheus_gate(gate: &str) -> (Run, View) {
    let mut strategy = strategy();
    strategy.stages[0].gates = vec![Gate::Prometheus(serde_yaml::from_str(gate).unwrap())];
    strategy.validate().unwrap();
    let mut run = start(RUN, REVISION, &strategy, &clusters(), 0.0).unwrap();
    let mut view = view();
    for now in [1.0, 3.0, 4.0] {
        let actions = advance(&mut run, &view, now);
        obey(&mut view, &actions);
    }
    assert_eq!(run.stages[0].state, StageState::Gating);
    view.readings.clear();
    (run, view)
}

/// Takes the due measurement at `now` with `reading`, as the controller
/// does, and advances.
fn measure(run: &mut Run, view: &mut View, now: f64, reading: Reading) -> bool {
    let Some(due) = prometheus::due(run, now) else {
        advance(run, view, now);
        return false;
    };
    view.readings
        .insert((due.run, due.stage, due.gate), reading);
    advance(run, view, now);
    view.readings.clear();
    true
}

fn values(value: f64) -> Reading {
    Reading::Values(vec![(r#"{cluster="c1"}"#.into(), value)])
}

const SLO: &str = "{ address: 'http://198.18.0.9:9090', query: 'sum(rate(x{cluster=~\"{{clusters}}\"}[1m]))', success: 'result < 0.01', interval: 10s, count: 3 }";

#[test]
fn a_prometheus_gate_measures_count_times_every_interval() {
    let (mut run, mut view) = on_a_prometheus_gate(SLO);
    let due = prometheus::due(&run, 4.0).expect("the first measurement is due at once");
    assert_eq!(due.address, "http://198.18.0.9:9090");
    assert_eq!(due.query, r#"sum(rate(x{cluster=~"c2|c1"}[1m]))"#);
    assert!(measure(&mut run, &mut view, 4.0, values(0.001)));
    assert!(
        !measure(&mut run, &mut view, 13.0, values(0.001)),
        "not due before 10 s"
    );
    assert!(measure(&mut run, &mut view, 14.0, values(0.002)));
    assert_eq!(run.stages[0].state, StageState::Gating, "two of three");
    assert!(measure(&mut run, &mut view, 24.0, values(0.0)));
    assert_eq!(run.stages[0].state, StageState::Completed);
    assert_eq!(run.stages[0].measurements.len(), 3);
    assert_eq!(
        run.stages[0].measurements[1].values,
        [r#"{cluster="c1"} 0.002"#]
    );
}

#[test]
fn a_failed_measurement_past_the_limit_rolls_the_stage_back() {
    let (mut run, mut view) = on_a_prometheus_gate(SLO);
    measure(&mut run, &mut view, 4.0, values(0.001));
    measure(&mut run, &mut view, 14.0, values(0.31));
    assert_eq!(run.state, RunState::Halted);
    assert_eq!(
        run.stages[0].reason.as_deref(),
        Some(
            r#"prometheus gate: query sum(rate(x{cluster=~"c2|c1"}[1m])) returned {cluster="c1"} 0.31, where result < 0.01 does not hold (1 failed measurement(s), failure-limit 0)"#
        )
    );
    assert!(
        run.stages[0]
            .clusters
            .iter()
            .all(|c| c.state == ClusterState::RolledBack)
    );
    assert!(
        run.stages[1..]
            .iter()
            .flat_map(|s| &s.clusters)
            .all(|c| c.state == ClusterState::Pending),
        "later stages untouched"
    );

    // With failure-limit 1, one failure is tolerated.
    let (mut run, mut view) =
        on_a_prometheus_gate(&SLO.replace("count: 3", "count: 3, failure-limit: 1"));
    for (now, value) in [(4.0, 0.5), (14.0, 0.0), (24.0, 0.0)] {
        measure(&mut run, &mut view, now, values(value));
    }
    assert_eq!(run.stages[0].state, StageState::Completed);
}

#[test]
fn unreachable_prometheus_and_missing_data_take_their_outcomes() {
    // retry (the default for unreachable): four in a row fail the gate.
    let (mut run, mut view) = on_a_prometheus_gate(SLO);
    let down = || Reading::Unreachable("198.18.0.9:9090: Connection refused".into());
    for now in [4.0, 14.0, 24.0] {
        measure(&mut run, &mut view, now, down());
        assert_eq!(run.state, RunState::Running);
    }
    measure(&mut run, &mut view, 34.0, down());
    assert_eq!(run.state, RunState::Halted);
    assert!(
        run.reason.as_deref().unwrap().contains(
            "prometheus gate: Prometheus unreachable (198.18.0.9:9090: Connection refused); query sum("
        ) && run.reason.as_deref().unwrap().contains("4 times in a row"),
        "{:?}",
        run.reason
    );

    // A success in between restarts the count of retries.
    let (mut run, mut view) = on_a_prometheus_gate(&SLO.replace("count: 3", "count: 9"));
    for now in [4.0, 14.0, 24.0] {
        measure(&mut run, &mut view, now, down());
    }
    measure(&mut run, &mut view, 34.0, values(0.0));
    measure(&mut run, &mut view, 44.0, down());
    assert_eq!(run.state, RunState::Running);

    // pause: the gate holds until approved, then passes.
    let (mut run, mut view) =
        on_a_prometheus_gate(&SLO.replace("count: 3", "count: 3, on-no-data: pause"));
    measure(&mut run, &mut view, 4.0, Reading::Values(vec![]));
    assert!(
        run.stages[0]
            .paused
            .as_deref()
            .unwrap()
            .starts_with("prometheus gate: no data (the query returned no series)")
    );
    assert!(prometheus::due(&run, 100.0).is_none(), "paused: no queries");
    advance(&mut run, &view, 100.0);
    assert_eq!(run.stages[0].state, StageState::Gating);
    run.stages[0].approved = true;
    advance(&mut run, &view, 101.0);
    assert_eq!(run.stages[0].state, StageState::Completed);

    // fail (the default for a refused query): at once.
    let (mut run, mut view) = on_a_prometheus_gate(SLO);
    measure(
        &mut run,
        &mut view,
        4.0,
        Reading::Error("bad_data: parse error".into()),
    );
    assert_eq!(run.state, RunState::Halted);
    assert!(
        run.reason
            .as_deref()
            .unwrap()
            .contains("query refused (bad_data: parse error)")
    );
}

#[test]
fn a_revision_carrying_the_agent_succeeds_once_every_node_runs_it() {
    let mut run = start(RUN, REVISION, &strategy(), &clusters(), 0.0).unwrap();
    run.agent = Some(
        serde_yaml::from_str(
            "{ image: 'fleetnet:0.2.0', settings: { bpf: { ipcache-max-entries: 4096 } } }",
        )
        .unwrap(),
    );
    let mut view = view();
    let actions = advance(&mut run, &view, 1.0);
    obey(&mut view, &actions);
    advance(&mut run, &view, 2.0);
    assert_eq!(
        run.stages[0].clusters[0].state,
        ClusterState::Progressing,
        "applied, but the old agent still runs"
    );
    assert_eq!(
        run.stages[0].clusters[0].waiting.as_deref(),
        Some("node n1 runs an image no revision named, not fleetnet:0.2.0")
    );
    let running = |image: &str, ipcache: u32| crate::model::AgentRunning {
        image: image.into(),
        settings: serde_yaml::from_str(&format!("{{ bpf: {{ ipcache-max-entries: {ipcache} }} }}"))
            .unwrap(),
    };
    let report = view.reports.get_mut(&("c2".into(), "n1".into())).unwrap();
    report.agent = running("fleetnet:0.2.0", 512);
    advance(&mut run, &view, 3.0);
    assert_eq!(run.stages[0].clusters[0].state, ClusterState::Progressing);
    let report = view.reports.get_mut(&("c2".into(), "n1".into())).unwrap();
    report.agent = running("fleetnet:0.2.0", 4096);
    let actions = advance(&mut run, &view, 4.0);
    assert_eq!(run.stages[0].clusters[0].state, ClusterState::Succeeded);
    obey(&mut view, &actions);

    // A node that never runs it times the cluster out, saying what it runs.
    advance(&mut run, &view, 40.0);
    assert_eq!(run.state, RunState::Halted);
    assert_eq!(
        run.stages[0].clusters[1].reason.as_deref(),
        Some(
            "not applied within 30 s: node n1 runs an image no revision named, not fleetnet:0.2.0"
        )
    );
}
