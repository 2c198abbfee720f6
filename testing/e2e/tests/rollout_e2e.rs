//! Staged rollouts on the fleet-in-a-box: 6 clusters x 1 node x 2 pods in
//! three stages (canary c1; staging c2, c3; prod c4, c5, c6), a real etcd,
//! two fleet controllers (one acts), and traffic from c2 to c1's p1 that
//! the canary's metric gate watches.
//!
//! 1. A good revision goes through every stage in order: the canary's
//!    wait and metric gates, staging one cluster at a time in ring order
//!    up to its approval, the acting controller killed while it waits (the
//!    standby goes on from the stored run), prod two at a time.
//! 2. A revision whose policy denies the watched traffic fails the
//!    canary's metric gate: the canary goes back to the revision it had,
//!    later stages are untouched, `status` says why.
//! 3. A run stopped mid-stage stays put until resumed; a cluster
//!    registered meanwhile is reported, not included.
//! 4. A revision whose policy does not parse is refused by the CLI, and
//!    when stored anyway the canary's agent rejects it, keeps enforcing
//!    the revision it had, and the stage rolls back.
//! 5. `rollout rollback` puts every cluster back.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use fleetnet_agent::api::status::StatusReport;
use fleetnet_fleet::model::{ClusterRun, ClusterState, Run, RunState, StageState};
use fleetnet_store::{
    keys as mesh_keys,
    records::{ClusterRecord, Record},
};
use fleetnet_testing::{
    controllers::Controller,
    fleet_in_a_box::{FleetInABox, FleetSpec},
    http::metric_value,
    probe, progress, wait_for,
};

const PORT: u16 = 9000;
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// c1 is the canary; staging c2 (ring 1) and c3 (ring 2); prod c4 (ring
/// 3), c5 (ring 1), c6 (ring 2).
fn labels(cluster: u16) -> String {
    match cluster {
        1 => "{ env: canary }".into(),
        2 | 3 => format!("{{ env: staging, ring: '{}' }}", cluster - 1),
        _ => format!(
            "{{ env: prod, ring: '{}' }}",
            [3, 1, 2][cluster as usize - 4]
        ),
    }
}

const STRATEGY: &str = "
name: envs
stages:
  - name: canary
    selector: { matchLabels: { env: canary } }
    cluster-timeout-seconds: 20
    gates:
      - wait: { seconds: 2 }
      - metric: { max-drop-ratio: 0.05, window-seconds: 3 }
  - name: staging
    selector: { matchLabels: { env: staging } }
    order-by: ring
    max-concurrency: 1
    cluster-timeout-seconds: 20
    gates: [ { approval: {} } ]
  - name: prod
    selector: { matchExpressions: [ { key: env, operator: In, values: [prod] } ] }
    order-by: ring
    max-concurrency: 50%
    cluster-timeout-seconds: 20
";

/// Every p1 takes ingress from anywhere: enforced, nothing denied.
const GOOD: &str = "
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: { name: p1-open, namespace: default }
    spec:
      podSelector: { matchLabels: { app: p1 } }
      policyTypes: [Ingress]
      ingress: [ {} ]
";

/// Every p1 takes ingress only from pods that do not exist.
const BAD: &str = "
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: { name: p1-closed, namespace: default }
    spec:
      podSelector: { matchLabels: { app: p1 } }
      policyTypes: [Ingress]
      ingress: [ { from: [ { podSelector: { matchLabels: { app: nobody } } } ] } ]
";

const INVALID: &str = "
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: { name: p1-typo, namespace: default }
    spec:
      podSelector: { matchExpressions: [ { key: app, operator: Equals, values: [p1] } ] }
";

/// Sends a datagram from c2's p1 to c1's p1 every 5 ms until dropped.
struct Traffic {
    running: Arc<AtomicBool>,
    sender: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(fleet: &FleetInABox) -> Self {
        let (source, destination) = (fleet.pod("c2/n1/p1"), fleet.pod("c1/n1/p1"));
        let socket = probe::udp_socket(
            &source.netns,
            SocketAddr::from((source.ip, 0)),
            Duration::from_secs(1),
        )
        .unwrap();
        let to = SocketAddr::from((destination.ip, PORT));
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let sender = thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                let _ = socket.send_to(b"watched", to);
                thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            running,
            sender: Some(sender),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
    }
}

fn stage<'a>(run: &'a Run, name: &str) -> &'a [ClusterRun] {
    &run.stages.iter().find(|s| s.name == name).unwrap().clusters
}

fn state_of(run: &Run, name: &str) -> StageState {
    run.stages.iter().find(|s| s.name == name).unwrap().state
}

fn wait_for_run(fleet: &FleetInABox, id: u64, what: &str, done: impl Fn(&Run) -> bool) -> Run {
    wait_for(what, RUN_TIMEOUT, || {
        fleet.run_status(id).is_ok_and(|run| done(&run))
    });
    fleet.run_status(id).unwrap()
}

/// Whether c1's p1 is under policy enforcement on c1's node.
fn c1_p1_enforced(fleet: &FleetInABox) -> bool {
    let ip = fleet.pod("c1/n1/p1").ip.octets();
    fleet.node("c1/n1").maps().endpoints().unwrap()[&ip].flags != 0
}

fn applied(fleet: &FleetInABox, cluster: &str) -> Option<u64> {
    fleet
        .fleet_report(cluster, "n1")
        .unwrap()
        .and_then(|r| r.applied)
}

fn target(fleet: &FleetInABox, cluster: &str) -> Option<(u64, u64)> {
    fleet
        .fleet_target(cluster)
        .unwrap()
        .map(|t| (t.revision, t.run))
}

/// The one controller acting, once exactly one does.
fn leader<'a>(fleet: &FleetInABox, controllers: &[&'a Controller]) -> &'a Controller {
    let leading = |c: &&Controller| {
        fleet.controller_metric(c, "fleetnet_rollout_controller_leader") == Some(1.0)
    };
    wait_for("one controller acts", Duration::from_secs(15), || {
        controllers.iter().filter(|c| leading(c)).count() == 1
    });
    controllers.iter().copied().find(leading).unwrap()
}

#[test]
fn staged_rollouts_with_gates_stops_and_rollbacks() {
    fleetnet_testing::require_root();
    let fleet = FleetInABox::build(FleetSpec {
        cluster_labels: labels,
        ..FleetSpec::new(6, 1, 2)
    })
    .expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");

    let file = |name: &str, yaml: &str| {
        fleet
            .write_file(name, yaml)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let cli = |args: &[&str]| fleet.fleet_command_ok(args).unwrap();
    cli(&[
        "fleet",
        "strategy",
        "apply",
        "-f",
        &file("envs.yaml", STRATEGY),
    ]);
    let good = file("good.yaml", GOOD);
    assert_eq!(
        cli(&[
            "fleet",
            "revision",
            "create",
            "-f",
            &good,
            "--description",
            "open p1"
        ])
        .trim(),
        "1"
    );
    assert!(!c1_p1_enforced(&fleet));

    let a = fleet.start_controller("a", 9963).unwrap();
    let b = fleet.start_controller("b", 9964).unwrap();
    let acting = leader(&fleet, &[&a, &b]);
    let standby = if acting.name == "a" { &b } else { &a };
    let _traffic = Traffic::start(&fleet);

    // 1. A good revision, stage by stage.
    progress("run 1: a good revision");
    assert_eq!(
        cli(&["rollout", "start", "--revision", "1", "--strategy", "envs"]).trim(),
        "1"
    );
    let run = wait_for_run(&fleet, 1, "staging waits for approval", |run| {
        state_of(run, "staging") == StageState::Gating
    });
    let canary = &run.stages[0];
    let c1 = &canary.clusters[0];
    assert_eq!(
        (canary.state, c1.name.as_str(), c1.state),
        (StageState::Completed, "c1", ClusterState::Succeeded)
    );
    assert!(
        canary.ended_unix.unwrap() - c1.ended_unix.unwrap() >= 5.0,
        "the wait (2 s) and metric (3 s) gates held the canary: {canary:?}"
    );
    let staging = stage(&run, "staging");
    assert_eq!(
        staging.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["c2", "c3"],
        "ring order"
    );
    assert!(
        staging[1].started_unix.unwrap() >= staging[0].ended_unix.unwrap(),
        "one staging cluster at a time: {staging:?}"
    );
    assert!(
        stage(&run, "prod")
            .iter()
            .all(|c| c.state == ClusterState::Pending)
    );
    for cluster in ["c1", "c2", "c3"] {
        assert_eq!(applied(&fleet, cluster), Some(1), "{cluster}");
    }
    for cluster in ["c4", "c5", "c6"] {
        assert_eq!(target(&fleet, cluster), None, "{cluster} untouched");
    }
    assert!(c1_p1_enforced(&fleet), "revision 1's policy is enforced");
    // (Metrics follow the run at the end of the controller's pass.)
    wait_for("an approval pending", Duration::from_secs(5), || {
        fleet.controller_metric(acting, r#"fleetnet_rollout_approvals_pending{run="1"}"#)
            == Some(1.0)
    });
    let status = cli(&["rollout", "status", "1"]);
    assert!(
        status.contains("waiting for approval: fleetnet rollout approve 1 --stage staging"),
        "{status}"
    );

    // The acting controller dies while the run waits; the standby takes
    // the run from etcd once the dead one's lease is gone.
    acting.kill();
    let killed = std::time::Instant::now();
    cli(&["rollout", "approve", "1"]);
    let run = wait_for_run(&fleet, 1, "run 1 completes", |run| {
        run.state == RunState::Completed
    });
    let finished = killed.elapsed();
    assert_eq!(leader(&fleet, &[standby]).name, standby.name);
    let took: Vec<f64> = run
        .stages
        .iter()
        .flat_map(|s| &s.clusters)
        .map(|c| c.ended_unix.unwrap() - c.started_unix.unwrap())
        .collect();
    eprintln!(
        "target set -> every agent of the cluster reports it applied: mean {:.0} ms, max {:.0} ms over 6 clusters",
        1000.0 * took.iter().sum::<f64>() / took.len() as f64,
        1000.0 * took.iter().copied().fold(0.0, f64::max)
    );
    eprintln!("acting controller killed -> standby finished the run: {finished:?} (lease 3 s)");
    let prod = stage(&run, "prod");
    assert_eq!(
        prod.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["c5", "c6", "c4"],
        "ring order"
    );
    for cluster in prod {
        // 50% of 3 is 2 at a time: when one starts, at most one other runs.
        let start = cluster.started_unix.unwrap();
        let running = prod
            .iter()
            .filter(|c| c.started_unix.unwrap() <= start && c.ended_unix.unwrap() > start)
            .count();
        assert!(running <= 2, "{prod:?}");
    }
    assert!(
        prod[0].started_unix >= run.stages[1].ended_unix,
        "prod starts after staging"
    );
    for cluster in 1..=6 {
        assert_eq!(applied(&fleet, &format!("c{cluster}")), Some(1));
    }
    eprint!("{}", cli(&["rollout", "status", "1"]));
    let completed = [
        r#"fleetnet_rollout_runs{run="1",revision="1",strategy="envs",state="completed"} 1"#,
        r#"fleetnet_rollout_clusters{run="1",state="succeeded"} 6"#,
        r#"fleetnet_rollout_approvals_pending{run="1"} 0"#,
    ];
    wait_for(
        "the metrics show run 1 completed",
        Duration::from_secs(5),
        || {
            let metrics = fleet.controller_metrics(standby).unwrap();
            completed.iter().all(|series| metrics.contains(series))
        },
    );
    let metrics = fleet.controller_metrics(standby).unwrap();
    let canary_seconds = metric_value(
        &metrics,
        r#"fleetnet_rollout_stage_duration_seconds{run="1",stage="canary",state="completed"}"#,
    );
    assert!(canary_seconds.is_some_and(|s| s >= 5.0), "{metrics}");

    // 2. A revision that denies the watched traffic.
    progress("run 2: a revision the metric gate catches");
    let bad = file("bad.yaml", BAD);
    assert_eq!(
        cli(&["fleet", "revision", "create", "-f", &bad]).trim(),
        "2"
    );
    cli(&["rollout", "start", "--revision", "2", "--strategy", "envs"]);
    let run = wait_for_run(&fleet, 2, "run 2 halts", |run| run.state.is_finished());
    assert_eq!(run.state, RunState::Halted, "{run:?}");
    let reason = run.reason.clone().unwrap();
    assert!(
        reason.starts_with("stage canary: metric gate: ") && reason.contains("packets dropped"),
        "{reason}"
    );
    assert_eq!(stage(&run, "canary")[0].state, ClusterState::RolledBack);
    for later in ["staging", "prod"] {
        assert_eq!(state_of(&run, later), StageState::Pending);
        assert!(
            stage(&run, later)
                .iter()
                .all(|c| c.state == ClusterState::Pending)
        );
    }
    assert_eq!(target(&fleet, "c1"), Some((1, 0)), "back to revision 1");
    wait_for("c1 runs revision 1 again", Duration::from_secs(10), || {
        applied(&fleet, "c1") == Some(1)
    });
    for cluster in 2..=6 {
        assert_eq!(target(&fleet, &format!("c{cluster}")), Some((1, 1)));
    }
    let status = cli(&["rollout", "status", "2"]);
    eprint!("{status}");
    assert!(
        status.contains("run 2: revision 2 with strategy envs: halted")
            && status.contains(&format!("reason: {reason}"))
            && status.contains("rolled-back"),
        "{status}"
    );

    // 3. Stopped mid-stage, resumed.
    progress("run 3: stop and resume");
    let settings = file(
        "settings.yaml",
        &format!("{GOOD}settings: {{ events-per-second: 5000 }}\n"),
    );
    assert_eq!(
        cli(&["fleet", "revision", "create", "-f", &settings]).trim(),
        "3"
    );
    cli(&["rollout", "start", "--revision", "3", "--strategy", "envs"]);
    wait_for_run(&fleet, 3, "the canary reaches its gates", |run| {
        state_of(run, "canary") == StageState::Gating
    });
    assert_eq!(cli(&["rollout", "stop", "3"]).trim(), "run 3 stopped");
    let stopped = fleet.run_status(3).unwrap();
    assert_eq!(stopped.state, RunState::Stopped);
    let again = fleet.fleet_command(&["rollout", "stop", "3"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stderr).trim(),
        "fleetnet: run 3 is stopped, not running"
    );
    // A cluster registered now is reported, not added.
    let record = ClusterRecord {
        v: 1,
        id: 9,
        pod_cidrs: vec!["10.9.0.0/16".parse().unwrap()],
        labels: [("env".to_string(), "prod".to_string())].into(),
        routing: Default::default(),
        routing_peers: Default::default(),
    };
    fleet
        .etcd_put(
            &mesh_keys::cluster("c9"),
            std::str::from_utf8(&record.encode()).unwrap(),
        )
        .unwrap();
    // Longer than both canary gates: nothing moves while stopped.
    thread::sleep(Duration::from_secs(6));
    assert_eq!(fleet.run_status(3).unwrap(), stopped);
    assert_eq!(target(&fleet, "c2"), Some((1, 1)));
    let status = cli(&["rollout", "status", "3"]);
    assert!(
        status.contains("registered since the run started (not part of it): c9"),
        "{status}"
    );
    assert_eq!(cli(&["rollout", "resume", "3"]).trim(), "run 3 resumed");
    wait_for_run(&fleet, 3, "run 3 reaches staging's approval", |run| {
        state_of(run, "staging") == StageState::Gating
    });
    cli(&["rollout", "approve", "3", "--stage", "staging"]);
    let run = wait_for_run(&fleet, 3, "run 3 completes", |run| run.state.is_finished());
    assert_eq!(run.state, RunState::Completed, "{run:?}");
    assert!(
        run.stages
            .iter()
            .flat_map(|s| &s.clusters)
            .all(|c| c.name != "c9")
    );
    for cluster in 1..=6 {
        assert_eq!(applied(&fleet, &format!("c{cluster}")), Some(3));
    }

    // 4. A revision that does not parse.
    progress("run 4: an invalid revision");
    let invalid = file("invalid.yaml", INVALID);
    let refused = fleet
        .fleet_command(&["fleet", "revision", "create", "-f", &invalid])
        .unwrap();
    let sentence = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && sentence.contains("policy default/p1-typo: ")
            && sentence.contains("unknown operator \"Equals\"")
            && sentence
                .trim()
                .ends_with("(or pass --force to store it anyway)"),
        "{sentence}"
    );
    assert_eq!(
        cli(&["fleet", "revision", "create", "-f", &invalid, "--force"]).trim(),
        "4"
    );
    cli(&["rollout", "start", "--revision", "4", "--strategy", "envs"]);
    let run = wait_for_run(&fleet, 4, "run 4 halts", |run| run.state.is_finished());
    assert_eq!(run.state, RunState::Halted);
    let reason = run.reason.unwrap();
    assert!(
        reason.starts_with(
            "stage canary: cluster c1: node n1 rejected revision 4: policy default/p1-typo:"
        ),
        "{reason}"
    );
    assert_eq!(target(&fleet, "c1"), Some((3, 0)));
    let report = fleet.fleet_report("c1", "n1").unwrap().unwrap();
    assert_eq!(report.applied, Some(3), "c1 kept revision 3: {report:?}");
    assert!(c1_p1_enforced(&fleet), "and still enforces its policy");
    wait_for(
        "c1's status shows revision 3",
        Duration::from_secs(5),
        || {
            let output = fleet
                .node("c1/n1")
                .fleetnet(&["status", "-o", "json"])
                .unwrap();
            serde_json::from_slice::<StatusReport>(&output.stdout)
                .is_ok_and(|status| status.fleet.applied == Some(3) && status.fleet.error.is_none())
        },
    );

    // 5. Rolling back run 3 puts every cluster on what it had before.
    progress("rollback of run 3");
    cli(&["rollout", "rollback", "3"]);
    let run = fleet.run_status(3).unwrap();
    assert_eq!(run.state, RunState::RolledBack);
    for cluster in 1..=6 {
        let cluster = format!("c{cluster}");
        assert_eq!(target(&fleet, &cluster), Some((1, 0)), "{cluster}");
        wait_for("back on revision 1", Duration::from_secs(10), || {
            applied(&fleet, &cluster) == Some(1)
        });
    }
    standby.stop().unwrap();
    fleet.stop_agents().unwrap();
}
