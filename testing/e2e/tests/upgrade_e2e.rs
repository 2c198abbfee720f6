//! Rollouts of the agent itself, on a fleet in a box of 3 clusters x 2
//! nodes x 2 pods in three stages (canary c1, staging c2, prod c3), with a
//! real Prometheus scraping every agent (a `cluster` label per target) and
//! the box playing kubelet for each cluster's agent DaemonSet manifest
//! (`--keep-pins`, one node at a time). Images name binaries: this build,
//! and test builds reporting versions 0.99.0, 0.99.1-bad (which holds
//! packets to other nodes 1,000 bytes under the path MTU, so large ones
//! are dropped) and 0.99.2.
//!
//! 1. 0.99.0 with a restart setting rolls through every stage, each gated
//!    by a PromQL drop-rate SLO; every node ends on it, with the setting.
//! 2. 0.99.1-bad: the canary's PromQL gate sees its drops and the canary
//!    goes back to 0.99.0; later stages are untouched.
//! 3. With Prometheus down, a gate whose `on-unreachable` is `pause`
//!    holds the run until `rollout approve`.
//!
//! Meanwhile pings between pods across every node, and a persistent TCP
//! connection, run through every restart: none may be lost.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, SocketAddrV4},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use fleetnet_fleet::model::{ClusterState, Run, RunState, StageState, prometheus::Phase};
use fleetnet_testing::{
    fleet_in_a_box::{
        BACKEND_PORT, DAEMONSET_FILE, ETCD_IP, FleetInABox, FleetSpec, Image, Replacement,
        agent_binary, current_image, test_build_binary,
    },
    flood::{Pinger, retransmitted_segments},
    probe, progress,
    prometheus::Prometheus,
    rr::{self, Connection},
    wait_for,
};

const REGISTRY: &str = "ghcr.io/fleetnet/fleetnet";
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn labels(cluster: u16) -> String {
    format!(
        "{{ env: {} }}",
        ["canary", "staging", "prod"][cluster as usize - 1]
    )
}

/// The drop rate SLO: under one dropped packet per second over the
/// stage's agents (`or vector(0)`: no drop counted yet is none).
const STRATEGY: &str = r#"
name: upgrade
stages:
  - name: canary
    selector: { matchLabels: { env: canary } }
    cluster-timeout-seconds: 90
    gates:
      - prometheus:
          address: http://198.18.0.2:9090
          query: 'sum(rate(fleetnet_drop_packets_total{cluster=~"{{clusters}}"}[5s])) or vector(0)'
          success: result < 1
          interval: 2s
          count: 3
  - name: staging
    selector: { matchLabels: { env: staging } }
    cluster-timeout-seconds: 90
    gates:
      - prometheus:
          address: http://198.18.0.2:9090
          query: 'sum(rate(fleetnet_drop_packets_total{cluster=~"{{clusters}}"}[5s])) or vector(0)'
          success: result < 1
          interval: 2s
          count: 2
  - name: prod
    selector: { matchLabels: { env: prod } }
    cluster-timeout-seconds: 90
"#;

/// The canary alone, with a gate that waits for a human when Prometheus
/// cannot be reached.
const BLIND: &str = r#"
name: blind
stages:
  - name: canary
    selector: { matchLabels: { env: canary } }
    cluster-timeout-seconds: 90
    gates:
      - prometheus:
          address: http://198.18.0.2:9090
          query: 'sum(rate(fleetnet_drop_packets_total{cluster=~"{{clusters}}"}[5s])) or vector(0)'
          success: result < 1
          interval: 1s
          on-unreachable: pause
"#;

fn revision(version: &str) -> String {
    format!(
        "agent:\n  image: {REGISTRY}:{version}\n  settings: {{ bpf: {{ metrics-max-entries: 32768 }} }}\n"
    )
}

fn images() -> BTreeMap<String, Image> {
    let test_build = |version: &str, fault: Option<&str>| {
        let mut env = vec![("FLEETNET_TEST_VERSION".to_string(), version.to_string())];
        if let Some(fault) = fault {
            env.push(("FLEETNET_TEST_FAULT".into(), fault.into()));
        }
        (
            format!("{REGISTRY}:{version}"),
            Image {
                binary: test_build_binary(),
                env,
            },
        )
    };
    BTreeMap::from([
        (
            current_image(),
            Image {
                binary: agent_binary(),
                env: Vec::new(),
            },
        ),
        test_build("0.99.0", None),
        test_build("0.99.1-bad", Some("shrink-path-mtu")),
        test_build("0.99.2", None),
    ])
}

#[test]
fn agent_upgrades_roll_out_gated_by_promql_and_roll_back() {
    fleetnet_testing::require_root();
    let fleet = FleetInABox::build(FleetSpec {
        cluster_labels: labels,
        ..FleetSpec::new(3, 2, 2)
    })
    .expect("building the fleet");
    let images = images();
    fleet
        .start_agents_as_daemonset()
        .expect("starting agents as the DaemonSet does");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    let targets: Vec<(SocketAddr, Vec<(&str, &str)>)> = fleet
        .nodes
        .iter()
        .map(|node| {
            (
                node.metrics_address(),
                vec![("cluster", node.cluster.as_str())],
            )
        })
        .collect();
    let prometheus =
        Prometheus::start_labelled(&fleet.underlay, SocketAddr::from((ETCD_IP, 9090)), &targets)
            .expect("starting Prometheus");
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
        &file("upgrade.yaml", STRATEGY),
    ]);
    cli(&[
        "fleet",
        "strategy",
        "apply",
        "-f",
        &file("blind.yaml", BLIND),
    ]);
    for (number, version) in [(1, "0.99.0"), (2, "0.99.1-bad"), (3, "0.99.2")] {
        let path = file(&format!("agent-{version}.yaml"), &revision(version));
        let created = cli(&["fleet", "revision", "create", "-f", &path]);
        assert_eq!(created.trim(), number.to_string());
    }
    let _controller = fleet.start_controller("a", 9963).unwrap();
    let _echo = rr::Server::start(&fleet.pod("c2/n1/p2").netns, BACKEND_PORT).unwrap();
    let to_echo = SocketAddrV4::new(fleet.pod("c2/n1/p2").ip, BACKEND_PORT);
    let tcp_client = fleet.pod("c3/n2/p2");
    let retransmits_before = retransmitted_segments(&tcp_client.netns);

    let stop = AtomicBool::new(false);
    let (replacements, pings, tcp) = thread::scope(|scope| {
        let kubelet = scope.spawn(|| fleet.kubelet(&images, &stop));
        // Small packets across every node: each node is on one path.
        let pings: Vec<_> = [
            ("c1/n1/p1", "c2/n2/p1"),
            ("c2/n1/p1", "c3/n2/p1"),
            ("c3/n1/p1", "c1/n2/p1"),
        ]
        .into_iter()
        .map(|(from, to)| Pinger::start(&fleet.pod(from).netns, fleet.pod(to).ip, 0.005, None))
        .collect();
        let tcp = scope.spawn(|| {
            rr::transactions_while(&tcp_client.netns, to_echo, Connection::Persistent, || {
                !stop.load(Ordering::Relaxed)
            })
            .unwrap()
        });
        // Large datagrams from c1's pods to other clusters: what the bad
        // build breaks.
        for (from, to) in [("c1/n1/p2", "c2/n2/p2"), ("c1/n2/p2", "c3/n1/p2")] {
            let (from, to) = (fleet.pod(from), fleet.pod(to));
            let socket = probe::udp_socket(
                &from.netns,
                SocketAddr::from((from.ip, 0)),
                Duration::from_secs(1),
            )
            .unwrap();
            let to = SocketAddr::from((to.ip, 9));
            let stop = &stop;
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.send_to(&[0x5a; 1200], to);
                    thread::sleep(Duration::from_millis(10));
                }
            });
        }

        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rollouts(&fleet, &prometheus, &cli)
        }));
        stop.store(true, Ordering::Relaxed);
        let replacements = kubelet.join().unwrap().expect("the kubelet");
        let pings: Vec<(u32, u32)> = pings.into_iter().map(|p| p.finish(true)).collect();
        let tcp = tcp.join().unwrap();
        if let Err(panic) = outcome {
            for node in &fleet.nodes {
                eprintln!("--- {} ---\n{}", node.id, node.log());
            }
            std::panic::resume_unwind(panic);
        }
        (replacements, pings, tcp)
    });

    for r in &replacements {
        eprintln!(
            "{} -> {}: ready after {}",
            r.node,
            r.image,
            r.ready
                .map_or("never".to_string(), |at| format!("{:?}", at - r.stopped))
        );
    }
    check_replacements(&replacements);
    let retransmits = retransmitted_segments(&tcp_client.netns) - retransmits_before;
    eprintln!(
        "through {} agent replacements: pings (sent, answered) {pings:?}; persistent TCP: \
         {} transactions/s, longest {:.1} ms, {} failed, {retransmits} segments retransmitted",
        replacements.len(),
        tcp.per_second as u64,
        tcp.max_micros / 1000.0,
        tcp.failed
    );
    for (sent, answered) in &pings {
        assert!(*sent > 1000, "the pings did not run: {pings:?}");
        assert_eq!(sent, answered, "pings lost across agent replacements");
    }
    assert_eq!(tcp.failed, 0, "TCP transactions failed");
    assert_eq!(retransmits, 0, "TCP segments lost and retransmitted");
}

/// The three runs; panics name what went wrong.
fn rollouts(fleet: &FleetInABox, prometheus: &Prometheus, cli: &dyn Fn(&[&str]) -> String) {
    // 1. A good version through every stage.
    progress("run 1: 0.99.0 through canary, staging and prod");
    let started = Instant::now();
    cli(&[
        "rollout",
        "start",
        "--revision",
        "1",
        "--strategy",
        "upgrade",
    ]);
    let run = wait_for_run(fleet, 1, |run| run.state.is_finished());
    assert_eq!(
        run.state,
        RunState::Completed,
        "{}",
        cli(&["rollout", "status", "1"])
    );
    eprintln!("run 1 took {:?}", started.elapsed());
    for stage in &run.stages {
        eprintln!(
            "  stage {}: {:.1} s",
            stage.name,
            stage.ended_unix.unwrap() - stage.started_unix.unwrap()
        );
    }
    for node in &fleet.nodes {
        let report = fleet
            .fleet_report(&node.cluster, &node.name)
            .unwrap()
            .unwrap();
        assert_eq!(report.version, "0.99.0", "{}", node.id);
        assert_eq!(report.agent.image, format!("{REGISTRY}:0.99.0"));
        assert_eq!(report.agent.settings.bpf.metrics_max_entries, Some(32768));
        assert!(report.ready);
    }
    for stage in &run.stages[..2] {
        assert!(
            stage
                .measurements
                .iter()
                .all(|m| m.phase == Phase::Successful)
                && !stage.measurements.is_empty(),
            "{}: {:?}",
            stage.name,
            stage.measurements
        );
    }
    let status = cli(&["rollout", "status", "1"]);
    eprint!("{status}");
    assert!(
        status.contains("prometheus http://198.18.0.2:9090: sum(rate("),
        "{status}"
    );

    // 2. A bad version, caught on the canary.
    progress("run 2: 0.99.1-bad, caught by the canary's PromQL gate");
    cli(&[
        "rollout",
        "start",
        "--revision",
        "2",
        "--strategy",
        "upgrade",
    ]);
    let run = wait_for_run(fleet, 2, |run| run.state.is_finished());
    assert_eq!(
        run.state,
        RunState::Halted,
        "{}",
        cli(&["rollout", "status", "2"])
    );
    let reason = run.reason.clone().unwrap();
    assert!(
        reason.starts_with(
            r#"stage canary: prometheus gate: query sum(rate(fleetnet_drop_packets_total{cluster=~"c1"}[5s])) or vector(0) returned "#
        ) && reason.contains("where result < 1 does not hold"),
        "{reason}"
    );
    assert!(
        run.stages[0]
            .clusters
            .iter()
            .all(|c| c.state == ClusterState::RolledBack)
    );
    for later in &run.stages[1..] {
        assert_eq!(later.state, StageState::Pending);
    }
    let dropped = prometheus
        .query(
            r#"sum(increase(fleetnet_drop_packets_total{cluster="c1",reason="frag_needed"}[2m]))"#,
        )
        .unwrap();
    assert!(
        dropped.first().is_some_and(|(_, n)| *n > 10.0),
        "the bad build's drops in Prometheus: {dropped:?}"
    );
    wait_for("c1's nodes back on 0.99.0", Duration::from_secs(60), || {
        fleet
            .nodes
            .iter()
            .filter(|n| n.cluster == "c1")
            .all(|node| {
                fleet
                    .fleet_report(&node.cluster, &node.name)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.version == "0.99.0" && r.ready)
            })
    });
    for cluster in ["c2", "c3"] {
        let target = fleet.fleet_target(cluster).unwrap().unwrap();
        assert_eq!((target.revision, target.run), (1, 1), "{cluster} untouched");
    }
    assert_eq!(
        run.stages[0].measurements.last().map(|m| m.phase),
        Some(Phase::Failed)
    );
    let status = cli(&["rollout", "status", "2"]);
    eprint!("{status}");
    assert!(
        status.contains("gate 1 prometheus http://198.18.0.2:9090: sum(rate(")
            && status.contains(" failed "),
        "{status}"
    );

    // The reports' cadence, as documented: every 2 s while watched.
    let report_times = |cluster: &str| {
        let mut seen: Vec<f64> = Vec::new();
        let until = Instant::now() + Duration::from_secs(7);
        while Instant::now() < until {
            if let Some(report) = fleet.fleet_report(cluster, "n1").unwrap()
                && seen.last() != Some(&report.counters.at_unix)
            {
                seen.push(report.counters.at_unix);
            }
            thread::sleep(Duration::from_millis(100));
        }
        seen
    };
    let times = report_times("c3");
    let gaps: Vec<f64> = times[1..].windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.len() >= 2 && gaps.iter().all(|gap| (1.5..=2.5).contains(gap)),
        "counters read {gaps:?} s apart"
    );

    // 3. Prometheus down during a gate that pauses.
    progress("run 3: Prometheus down, a gate that pauses");
    prometheus.stop();
    cli(&["rollout", "start", "--revision", "3", "--strategy", "blind"]);
    let run = wait_for_run(fleet, 3, |run| {
        run.stages[0].paused.is_some() || run.state.is_finished()
    });
    let paused = run.stages[0].paused.clone().unwrap_or_default();
    assert!(
        paused.starts_with("prometheus gate: Prometheus unreachable (http://198.18.0.2:9090: "),
        "{paused} / {:?}",
        run.reason
    );
    let status = cli(&["rollout", "status", "3"]);
    assert!(
        status.contains("paused: prometheus gate: Prometheus unreachable"),
        "{status}"
    );
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fleet.run_status(3).unwrap().state,
        RunState::Running,
        "held"
    );
    cli(&["rollout", "approve", "3"]);
    let run = wait_for_run(fleet, 3, |run| run.state.is_finished());
    assert_eq!(
        run.state,
        RunState::Completed,
        "{}",
        cli(&["rollout", "status", "3"])
    );
    let manifest =
        std::fs::read_to_string(fleet.workdir.join("clusters/c1").join(DAEMONSET_FILE)).unwrap();
    assert!(
        manifest.contains(&format!("{REGISTRY}:0.99.2")),
        "{manifest}"
    );
}

/// Each cluster's agents replaced one at a time; the bad version reached
/// only c1, whose agents went back; a measure of how fast.
fn check_replacements(replacements: &[Replacement]) {
    let cluster_of = |r: &Replacement| r.node.split('/').next().unwrap().to_string();
    for cluster in ["c1", "c2", "c3"] {
        let of: Vec<&Replacement> = replacements
            .iter()
            .filter(|r| cluster_of(r) == cluster)
            .collect();
        for pair in of.windows(2) {
            if let Some(ready) = pair[0].ready {
                assert!(
                    pair[1].stopped >= ready || pair[1].image != pair[0].image,
                    "{cluster}: two nodes replaced at once: {pair:?}"
                );
            }
        }
    }
    let bad: Vec<&Replacement> = replacements
        .iter()
        .filter(|r| r.image.ends_with("-bad"))
        .collect();
    assert!(
        !bad.is_empty() && bad.iter().all(|r| cluster_of(r) == "c1"),
        "{bad:?}"
    );
    let first_bad = bad.iter().filter_map(|r| r.ready).min().unwrap();
    let back = replacements
        .iter()
        .filter(|r| r.stopped > first_bad && r.image.ends_with(":0.99.0"))
        .filter_map(|r| r.ready)
        .max()
        .unwrap();
    eprintln!(
        "first bad agent ready -> c1 back on 0.99.0 everywhere: {:?}",
        back - first_bad
    );
}

fn wait_for_run(fleet: &FleetInABox, id: u64, done: impl Fn(&Run) -> bool) -> Run {
    wait_for(&format!("run {id}"), RUN_TIMEOUT, || {
        fleet.run_status(id).is_ok_and(|run| done(&run))
    });
    fleet.run_status(id).unwrap()
}
