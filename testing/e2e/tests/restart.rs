//! Agent restarts under load, on a 2 x 1 x 2 fleet in a box whose agents run
//! with `--keep-pins` (as the DaemonSet does): c1's agent is stopped with
//! SIGTERM and started again (a rolling upgrade), c2's is killed with
//! SIGKILL and started again (a crash). Meanwhile a persistent connection
//! to the server pod, one to the global Service's VIP, new connections to
//! the VIP and a 500/s ping run from c1 to c2.
//!
//! Nothing may be lost: no failed transaction, no TCP retransmission in the
//! clients' namespaces, no ping unanswered. The new agents take over the
//! pinned links (one program per hook, a new program id, the same link)
//! and maps, and still follow changes afterwards.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use fleetnet_testing::{
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, Node, SERVICE_PORT, agent_binary},
    flood::{Pinger, retransmitted_segments},
    rr::{self, Connection, Rate},
    side_by_side::{self, CLIENT, SERVER, VIP},
};

const LOAD: Duration = Duration::from_secs(14);
const PINGS_PER_SECOND: u32 = 500;

#[test]
fn connections_lose_nothing_while_agents_restart_and_crash() {
    let fleet = FleetInABox::build(FleetSpec::new(2, 1, 2)).expect("building the fleet");
    let binary = agent_binary();
    for node in &fleet.nodes {
        node.start_agent_with(&binary, &["--keep-pins"]).unwrap();
    }
    for node in &fleet.nodes {
        node.wait_ready(Duration::from_secs(60)).unwrap();
    }
    side_by_side::serve_perf(&fleet);
    let _echo = rr::Server::start(&fleet.pod(SERVER).netns, BACKEND_PORT).unwrap();
    let server = fleet.pod(SERVER);
    let (pod_client, vip_client) = (fleet.pod(CLIENT), fleet.pod("c1/n1/p2"));
    let new_client = fleet.pod("c2/n1/p1");
    let to_pod = SocketAddrV4::new(server.ip, BACKEND_PORT);
    let to_vip = SocketAddrV4::new(VIP, SERVICE_PORT);
    let (c1, c2) = (fleet.node("c1/n1"), fleet.node("c2/n1"));
    let hooks_before = [
        hooks(c1, &pod_client.host_interface),
        hooks(c2, &server.host_interface),
    ];
    let retransmits_before: Vec<u64> = [pod_client, vip_client, server]
        .iter()
        .map(|pod| retransmitted_segments(&pod.netns))
        .collect();

    let mut restarts = BTreeMap::new();
    let (persistent_pod, persistent_vip, connects, pings) = thread::scope(|scope| {
        let run = |netns: &'static str, to, connection| {
            let netns = &fleet.pod(netns).netns;
            scope.spawn(move || rr::transactions(netns, to, connection, LOAD).unwrap())
        };
        let persistent_pod = run(CLIENT, to_pod, Connection::Persistent);
        let persistent_vip = run("c1/n1/p2", to_vip, Connection::Persistent);
        // New connections from c2 to an echo server in c1's client pod:
        // through both restarting agents.
        let _echo_c1 = rr::Server::start(&pod_client.netns, BACKEND_PORT).unwrap();
        let to_c1 = SocketAddrV4::new(pod_client.ip, BACKEND_PORT);
        let connects = scope.spawn(move || {
            rr::transactions(&new_client.netns, to_c1, Connection::PerRequest, LOAD).unwrap()
        });
        let pings = Pinger::start(
            &pod_client.netns,
            server.ip,
            1.0 / f64::from(PINGS_PER_SECOND),
            Some((LOAD.as_secs_f64() * f64::from(PINGS_PER_SECOND)) as u32),
        );

        thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        c1.stop_agent().expect("c1's agent stops cleanly");
        c1.start_agent_with(&binary, &["--keep-pins"]).unwrap();
        c1.wait_ready(Duration::from_secs(60)).unwrap();
        restarts.insert("c1/n1 (SIGTERM, upgrade)", started.elapsed());
        thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        c2.kill_agent();
        c2.start_agent_with(&binary, &["--keep-pins"]).unwrap();
        c2.wait_ready(Duration::from_secs(60)).unwrap();
        restarts.insert("c2/n1 (SIGKILL, crash)", started.elapsed());
        (
            persistent_pod.join().unwrap(),
            persistent_vip.join().unwrap(),
            connects.join().unwrap(),
            pings.finish(false),
        )
    });

    for (node, took) in &restarts {
        eprintln!("agent of {node} down to ready again: {took:?}");
    }
    let retransmits: Vec<u64> = [pod_client, vip_client, server]
        .iter()
        .zip(&retransmits_before)
        .map(|(pod, before)| retransmitted_segments(&pod.netns) - before)
        .collect();
    report("persistent, pod IP", &persistent_pod);
    report("persistent, VIP", &persistent_vip);
    report("new connection per request, c2 -> c1 pod", &connects);
    eprintln!(
        "ping every {} µs: {} sent, {} answered; TCP segments retransmitted (client pod, VIP client pod, server pod): {retransmits:?}",
        1_000_000 / PINGS_PER_SECOND,
        pings.0,
        pings.1
    );
    for (name, rate) in [
        ("persistent to the pod IP", &persistent_pod),
        ("persistent to the VIP", &persistent_vip),
        ("new connections", &connects),
    ] {
        assert_eq!(
            rate.failed, 0,
            "{name}: transactions failed across the restarts"
        );
    }
    assert_eq!(
        retransmits,
        [0, 0, 0],
        "segments were lost and retransmitted"
    );
    assert!(
        pings.0 > PINGS_PER_SECOND * 10,
        "the ping flood did not run: {pings:?}"
    );
    assert_eq!(pings.0, pings.1, "pings lost across the restarts");

    let hooks_after = [
        hooks(c1, &pod_client.host_interface),
        hooks(c2, &server.host_interface),
    ];
    for ((before, after), node) in hooks_before
        .iter()
        .zip(&hooks_after)
        .zip(["c1/n1", "c2/n1"])
    {
        for ((hook, old), (_, new)) in before.iter().zip(after) {
            assert_eq!(
                new.len(),
                1,
                "{node} {hook}: programs attached {new:?}, not one"
            );
            assert_ne!(
                old, new,
                "{node} {hook}: the new agent's program was not swapped in"
            );
        }
    }

    // The new agents still follow changes.
    let mut fleet = fleet;
    let added = fleet.add_pod("c2/n1").unwrap();
    let ip = fleet.pod(&added).ip;
    fleetnet_testing::wait_for(
        "a pod added after the restarts reachable from c1",
        Duration::from_secs(10),
        || {
            fleetnet_testing::probe::ping(&fleet.pod(CLIENT).netns, ip, Duration::from_secs(1))
                .unwrap_or(false)
        },
    );
}

fn report(name: &str, rate: &Rate) {
    eprintln!(
        "{name}: {:.0} transactions/s, p99 {:.0} µs, longest {:.1} ms, {} failed",
        rate.per_second,
        rate.p99_micros,
        rate.max_micros / 1000.0,
        rate.failed
    );
}

/// Program ids at from-pod's (ingress) and to-pod's (egress) hooks of a
/// pod's host-side interface on `node`.
fn hooks(node: &Node, interface: &str) -> [(&'static str, Vec<u32>); 2] {
    let ids = |hook| {
        node.netns
            .enter(|| SchedClassifier::query_tcx(interface, hook))
            .unwrap()
            .unwrap_or_else(|error| panic!("querying {interface}'s TCX hooks: {error}"))
            .1
            .iter()
            .map(|program| program.id())
            .collect()
    };
    [
        ("ingress", ids(TcAttachType::Ingress)),
        ("egress", ids(TcAttachType::Egress)),
    ]
}
