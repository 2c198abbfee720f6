//! etcd faults on the fleet in a box: 3 clusters x 2 nodes x 2 pods, one
//! agent per node, and an etcd of three members, each in its own namespace
//! on the underlay, every agent given all three. Throughout, pods of
//! different clusters ping each other every 100 ms, and not one ping may
//! be lost: the datapath forwards from the last known state whatever etcd
//! does.
//!
//! - the leader killed: agents go on with the other two members, a pod
//!   added and one removed afterwards converge everywhere;
//! - one member cut off the underlay (no peer, no client reaches it, and
//!   nothing tells them), then the leader cut off from its peers only (its
//!   clients still reach it: etcd's require-leader ends their watches):
//!   agents move to the others, changes and a compaction meanwhile
//!   converge, nothing is stale after healing;
//! - all three stopped while pods come and go on both sides, and started
//!   again: every node's ipcache holds exactly the fleet's pods, etcd
//!   exactly their endpoint keys; agents retried with bounded backoff and
//!   logged a few lines, not one per attempt. The time to resync is
//!   printed.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use fleetnet_testing::{
    fleet_in_a_box::{FleetInABox, FleetSpec, Node},
    probe,
};

/// Long enough that a node rides out a member dying under its keepalive
/// (noticed within a quarter of the TTL, or by HTTP/2 pings within 9 s).
const LEASE_TTL: u64 = 15;
/// Pods that stay all along, pinging each other across clusters.
const PINGS: [(&str, &str); 3] = [
    ("c1/n1/p1", "c2/n1/p1"),
    ("c2/n2/p1", "c3/n1/p1"),
    ("c3/n2/p1", "c1/n2/p1"),
];

fn fleet() -> FleetInABox {
    let spec = FleetSpec {
        etcd_members: 3,
        lease_ttl_seconds: LEASE_TTL,
        ..FleetSpec::new(3, 2, 2)
    };
    let fleet = FleetInABox::build(spec).expect("building the fleet");
    assert_eq!(fleet.etcd_endpoints().len(), 3);
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("initial convergence");
    fleet
}

/// A leader killed: agents carry on with the two others.
#[test]
fn a_killed_etcd_leader_changes_nothing_for_traffic_and_changes_still_converge() {
    let mut fleet = fleet();
    let traffic = Traffic::start(&fleet);
    let listings = listings(&fleet);

    let leader = fleet.etcd_leader().expect("finding the etcd leader");
    fleet.etcd_member_mut(leader).kill();
    let killed = Instant::now();
    let added = fleet.add_pod("c1/n2").unwrap();
    fleet.remove_pod("c3/n1/p2").unwrap();
    let (converged, moved) = converge_and_watch_moves(&fleet, &listings, killed, 40);
    eprintln!(
        "etcd leader (member {}) killed: a pod added and one removed right after converged on \
         every node in {converged:?}; agents' watches went through the other members after {}",
        leader + 1,
        describe(&moved)
    );
    fully_converged(&fleet, Duration::from_secs(30)).expect("etcd holds exactly the pods");
    assert!(
        probe::ping(
            &fleet.pod("c2/n2/p1").netns,
            fleet.pod(&added).ip,
            Duration::from_secs(3)
        )
        .unwrap(),
        "c2 cannot reach {added}, added after the leader died"
    );
    every_agent_connected(&fleet);

    // The member comes back and catches up; nothing changes for anyone.
    fleet
        .etcd_member_mut(leader)
        .restart()
        .expect("restarting the member");
    let added = fleet.add_pod("c2/n1").unwrap();
    fully_converged(&fleet, Duration::from_secs(30)).expect("convergence after its return");
    member_holds_exactly_the_pods(&fleet, leader);
    assert!(
        probe::ping(
            &fleet.pod("c3/n1/p1").netns,
            fleet.pod(&added).ip,
            Duration::from_secs(3)
        )
        .unwrap()
    );
    traffic.check("the leader's death and return");
    no_agent_lost_its_lease_or_failed(&fleet);
}

/// One member cut off the underlay, then the leader cut off from its
/// peers only: agents move off each, changes converge, nothing stale.
#[test]
fn a_partitioned_etcd_member_loses_its_agents_to_the_others_and_heals_without_stale_keys() {
    let mut fleet = fleet();
    let traffic = Traffic::start(&fleet);

    // 1. A follower's link goes down: its clients hear nothing more.
    let leader = fleet.etcd_leader().unwrap();
    let cut = (leader + 1) % 3;
    let listings_before = listings(&fleet);
    fleet.cut_etcd_member(cut, true).unwrap();
    let started = Instant::now();
    let added = fleet.add_pod("c2/n1").unwrap();
    fleet.remove_pod("c1/n2/p2").unwrap();
    let (converged, moved) = converge_and_watch_moves(&fleet, &listings_before, started, 45);
    eprintln!(
        "etcd member {} cut off the underlay: changes made right after converged everywhere in \
         {converged:?}; agents' watches moved to the others after {}",
        cut + 1,
        describe(&moved)
    );
    // History compacted while the member is away: it must catch up on a
    // compacted log, and no agent may depend on the history.
    let compacted = fleet.etcd_compact().expect("compacting etcd");
    let added_later = fleet.add_pod("c3/n2").unwrap();
    fully_converged(&fleet, Duration::from_secs(30)).expect("convergence after compaction");
    fleet.cut_etcd_member(cut, false).unwrap();
    fleet
        .etcd_member_mut(cut)
        .wait_healthy(Duration::from_secs(30))
        .expect("the member rejoins");
    fleet.remove_pod(&added).unwrap();
    fully_converged(&fleet, Duration::from_secs(30)).expect("convergence after healing");
    member_holds_exactly_the_pods(&fleet, cut);
    eprintln!("(compacted at revision {compacted} meanwhile)");

    // 2. The leader loses its peers, not its clients: it steps down, and
    // require-leader makes it refuse its clients rather than serve a view
    // that no longer moves.
    let leader = fleet.etcd_leader().unwrap();
    let listings_before = listings(&fleet);
    fleet.isolate_etcd_member(leader, true).unwrap();
    let started = Instant::now();
    fleet.remove_pod(&added_later).unwrap();
    let added = fleet.add_pod("c1/n1").unwrap();
    let (converged, moved) = converge_and_watch_moves(&fleet, &listings_before, started, 45);
    eprintln!(
        "etcd leader (member {}) cut off from its peers, still reachable: changes converged in \
         {converged:?}; agents' watches moved to the others after {}",
        leader + 1,
        describe(&moved)
    );
    fully_converged(&fleet, Duration::from_secs(30)).expect("etcd holds exactly the pods");
    fleet.isolate_etcd_member(leader, false).unwrap();
    fleet
        .etcd_member_mut(leader)
        .wait_healthy(Duration::from_secs(30))
        .expect("the member rejoins");
    fleet.remove_pod(&added).unwrap();
    fully_converged(&fleet, Duration::from_secs(30)).expect("convergence after healing");
    member_holds_exactly_the_pods(&fleet, leader);
    every_agent_connected(&fleet);
    traffic.check("two partitions");
    no_agent_lost_its_lease_or_failed(&fleet);
}

/// All three members stopped while pods change, then started again.
#[test]
fn with_all_etcd_members_down_traffic_flows_and_their_return_resyncs_without_stale_entries() {
    let mut fleet = fleet();
    let traffic = Traffic::start(&fleet);
    let session_errors = |fleet: &FleetInABox| -> Vec<f64> {
        fleet
            .nodes
            .iter()
            .map(|node| {
                node.metric(r#"fleetnet_etcd_errors_total{operation="session"}"#)
                    .unwrap()
                    .unwrap_or(0.0)
            })
            .collect()
    };
    let errors_before = session_errors(&fleet);
    let log_offsets: Vec<usize> = fleet.nodes.iter().map(|node| node.log().len()).collect();

    for m in 0..3 {
        fleet.etcd_member_mut(m).kill();
    }
    let down = Instant::now();
    // Pods come and go on both sides while etcd is away.
    let leaving = fleet.pod("c2/n2/p2").ip;
    fleet.remove_pod("c2/n2/p2").unwrap();
    fleet.remove_pod("c1/n1/p2").unwrap();
    let arrived = [
        fleet.add_pod("c1/n2").unwrap(),
        fleet.add_pod("c3/n2").unwrap(),
    ];
    std::thread::sleep(Duration::from_secs(3));
    let stale_meanwhile = fleet.node("c3/n1").maps().ipcache_lookup(leaving);
    assert!(
        stale_meanwhile.is_some_and(|entry| {
            entry.identity != dataplane_common::identity::cluster_pods(entry.cluster_id)
        }),
        "without etcd, c3 cannot have learned that c2/n2/p2 left: it keeps the last state"
    );
    // Long enough for every retry loop to reach its longest wait.
    let outage = Duration::from_secs(20);
    std::thread::sleep(outage.saturating_sub(down.elapsed()));
    traffic.check("the outage");

    for m in 0..3 {
        fleet
            .etcd_member_mut(m)
            .spawn()
            .expect("starting the member");
    }
    let restarted = Instant::now();
    for m in 0..3 {
        fleet
            .etcd_member_mut(m)
            .wait_healthy(Duration::from_secs(30))
            .expect("the member is healthy again");
    }
    let healthy = restarted.elapsed();
    let resynced = fully_converged(&fleet, Duration::from_secs(30))
        .expect("convergence after etcd returned")
        + healthy;
    eprintln!(
        "etcd down for {:.1?} (all three members): resync after its return took {resynced:.1?} \
         from the members' start ({:.1?} after they were healthy): every node's ipcache exactly \
         the fleet's pods and etcd exactly their endpoint keys",
        restarted.duration_since(down),
        resynced - healthy
    );
    for id in &arrived {
        assert!(
            probe::ping(
                &fleet.pod("c2/n1/p1").netns,
                fleet.pod(id).ip,
                Duration::from_secs(3)
            )
            .unwrap(),
            "c2 cannot reach {id}, added while etcd was down"
        );
    }
    every_agent_connected(&fleet);

    // Retried with backoff: more than once, far less than once per 200 ms;
    // logged as a few lines, and its end.
    let errors_after = session_errors(&fleet);
    let outage_seconds = restarted.duration_since(down).as_secs_f64();
    for ((node, before), after) in fleet.nodes.iter().zip(&errors_before).zip(&errors_after) {
        let attempts = after - before;
        assert!(
            attempts >= 3.0 && attempts <= outage_seconds,
            "{}: {attempts} failed session attempts in a {outage_seconds:.0} s outage",
            node.id
        );
    }
    let mut counts = Vec::new();
    for (node, offset) in fleet.nodes.iter().zip(&log_offsets) {
        let log = node.log();
        let since = strip_colors(&log[*offset..]);
        let warnings: Vec<&str> = since
            .lines()
            .filter(|line| line.contains(" WARN "))
            .collect();
        assert!(
            !warnings.is_empty() && warnings.len() <= 12,
            "{}: {} warnings for one outage:\n{}",
            node.id,
            warnings.len(),
            warnings.join("\n")
        );
        counts.push(format!("{} {}", node.id, warnings.len()));
        for recovered in ["etcd session: working again", "mesh watch: working again"] {
            assert!(
                since.contains(recovered),
                "{}: no `{recovered}` line:\n{since}",
                node.id
            );
        }
    }
    eprintln!(
        "failed session attempts per agent: {:?}; warnings logged per agent for the whole \
         outage and return: {}",
        errors_before
            .iter()
            .zip(&errors_after)
            .map(|(before, after)| after - before)
            .collect::<Vec<_>>(),
        counts.join(", ")
    );
    traffic.check("the outage and the return");
    no_agent_lost_its_lease_or_failed(&fleet);
}

/// `text` without the terminal colours the agent's log lines carry.
fn strip_colors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Pings between pods of different clusters every 100 ms, each answered
/// within a second or counted as lost.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// (pair, answered) for every ping sent.
    probes: Arc<Mutex<Vec<(String, bool, Instant)>>>,
}

impl Traffic {
    fn start(fleet: &FleetInABox) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let threads = PINGS
            .iter()
            .map(|(src, dst)| {
                let path: PathBuf = fleet.pod(src).netns.path();
                let ip: Ipv4Addr = fleet.pod(dst).ip;
                let pair = format!("{src} -> {dst}");
                let (stop, probes) = (stop.clone(), probes.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answered =
                            probe::ping_at(&path, ip, Duration::from_secs(1)).unwrap_or(false);
                        probes
                            .lock()
                            .unwrap()
                            .push((pair.clone(), answered, Instant::now()));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        Self {
            stop,
            threads,
            probes,
        }
    }

    /// Fails if any ping so far was lost; `during` names what happened.
    fn check(&self, during: &str) {
        let probes = self.probes.lock().unwrap();
        let lost: Vec<String> = probes
            .iter()
            .filter(|(_, answered, _)| !answered)
            .map(|(pair, _, at)| format!("{pair} at {at:?}"))
            .collect();
        assert!(
            lost.is_empty(),
            "{} of {} pings lost during {during}:\n{}",
            lost.len(),
            probes.len(),
            lost.join("\n")
        );
        assert!(probes.len() > 30, "only {} pings sent", probes.len());
        eprintln!(
            "{} pings across clusters during {during}, none lost",
            probes.len()
        );
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Every agent's count of full listings of the mesh, and the length of
/// its log.
fn listings(fleet: &FleetInABox) -> Vec<(f64, usize)> {
    fleet
        .nodes
        .iter()
        .map(|node| {
            let listings = node
                .metric("fleetnet_mesh_listings_total")
                .unwrap()
                .unwrap_or(0.0);
            (listings, node.log().len())
        })
        .collect()
}

/// The agent's watch runs elsewhere since `before`: it listed the mesh
/// again (its watch broke), or opened it again when a member was dropped.
fn watch_moved(node: &Node, (listings, log_offset): (f64, usize)) -> bool {
    node.metric("fleetnet_mesh_listings_total")
        .ok()
        .flatten()
        .is_some_and(|now| now > listings)
        || node
            .log()
            .get(log_offset..)
            .is_some_and(|log| log.contains("watching again through the others"))
}

/// Waits until every node's ipcache is exactly the fleet's pods, and
/// meanwhile (for up to `watch_seconds` after `since`) notes when each
/// agent's watch moved ([`watch_moved`]). Returns the convergence time
/// since `since`, and which agents moved after how long. (etcd's keys are compared afterwards: etcdctl
/// itself may wait seconds on the member at fault.)
fn converge_and_watch_moves(
    fleet: &FleetInABox,
    before: &[(f64, usize)],
    since: Instant,
    watch_seconds: u64,
) -> (Duration, Vec<(String, Duration)>) {
    let deadline = since + Duration::from_secs(watch_seconds);
    let mut moved: Vec<Option<Duration>> = vec![None; fleet.nodes.len()];
    let mut converged = None;
    while Instant::now() < deadline {
        for ((node, before), moved) in fleet.nodes.iter().zip(before).zip(&mut moved) {
            if moved.is_none() && watch_moved(node, *before) {
                *moved = Some(since.elapsed());
            }
        }
        if converged.is_none() && ipcache_mismatches(fleet).is_empty() {
            converged = Some(since.elapsed());
        }
        // HTTP/2 pings notice a silent member within 9 s: past that (and
        // converged), every agent that was going to move has.
        if converged.is_some() && since.elapsed() > Duration::from_secs(12) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let converged = converged.unwrap_or_else(|| {
        panic!(
            "not converged {watch_seconds} s after the fault:\n{}",
            ipcache_mismatches(fleet).join("\n")
        )
    });
    let moved = fleet
        .nodes
        .iter()
        .zip(moved)
        .filter_map(|(node, moved)| Some((node.id.clone(), moved?)))
        .collect();
    (converged, moved)
}

fn describe(moved: &[(String, Duration)]) -> String {
    if moved.is_empty() {
        return "(none had it)".into();
    }
    moved
        .iter()
        .map(|(node, after)| format!("{node} {after:.1?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ipcache_mismatches(fleet: &FleetInABox) -> Vec<String> {
    fleet
        .nodes
        .iter()
        .flat_map(|node| fleet.ipcache_mismatches(node))
        .collect()
}

/// What differs from the fleet's pods: every node's ipcache, and the
/// endpoint keys in etcd.
fn mismatches(fleet: &FleetInABox) -> Vec<String> {
    let mut problems = ipcache_mismatches(fleet);
    match fleet.etcd_keys("/fleetnet/v1/endpoints/") {
        Ok(keys) => {
            let published: BTreeSet<String> = keys
                .iter()
                .filter_map(|key| key.rsplit('/').next())
                .map(str::to_string)
                .collect();
            let pods: BTreeSet<String> = fleet.pods().map(|(_, pod)| pod.ip.to_string()).collect();
            if published != pods {
                problems.push(format!(
                    "etcd endpoint keys {published:?} are not the pods {pods:?}"
                ));
            }
        }
        Err(error) => problems.push(format!("reading etcd: {error}")),
    }
    problems
}

/// Waits until [`mismatches`] is empty; returns how long that took.
fn fully_converged(fleet: &FleetInABox, timeout: Duration) -> Result<Duration, String> {
    let mut problems = Vec::new();
    let converged = fleetnet_testing::poll(timeout, fleetnet_testing::POLL_EVERY, || {
        problems = mismatches(fleet);
        problems.is_empty().then_some(())
    });
    converged
        .map(|(_, took)| took)
        .ok_or_else(|| format!("not converged after {timeout:?}:\n{}", problems.join("\n")))
}

/// Member `index`, asked alone (a local read), holds exactly the pods'
/// endpoint keys: it caught up, nothing stale on it.
fn member_holds_exactly_the_pods(fleet: &FleetInABox, index: usize) {
    let pods: BTreeSet<String> = fleet.pods().map(|(_, pod)| pod.ip.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let output = fleet
            .etcdctl_on(
                index,
                &[
                    "get",
                    "--consistency=s",
                    "--prefix",
                    "--keys-only",
                    "/fleetnet/v1/endpoints/",
                ],
            )
            .unwrap();
        let held: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|key| key.rsplit('/').next())
            .filter(|ip| !ip.is_empty())
            .map(str::to_string)
            .collect();
        if held == pods {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd member {} holds endpoint keys {held:?}, not the pods {pods:?}",
            index + 1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every agent's mesh watch is connected.
fn every_agent_connected(fleet: &FleetInABox) {
    for node in &fleet.nodes {
        fleetnet_testing::wait_for(
            &format!("{}'s watch connected", node.id),
            Duration::from_secs(20),
            || node.metric("fleetnet_etcd_connected").ok().flatten() == Some(1.0),
        );
    }
}

/// No agent's lease ran out (its keys would have left the mesh) and none
/// logged an error.
fn no_agent_lost_its_lease_or_failed(fleet: &FleetInABox) {
    for node in &fleet.nodes {
        node.assert_untroubled();
        assert!(node.agent_running(), "{}: the agent exited", node.id);
    }
}
