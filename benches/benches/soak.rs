//! Churn soak: on a 2 x 1 x 2 fleet with the global Service `perf` served
//! from c2, pods in c2 come and go as the Service's backends at a steady
//! rate (each added with its own echo server, made a backend, and later
//! taken out of the Service and deleted), while c1's client opens a new
//! connection per request to the VIP throughout. Afterwards every map of
//! both nodes must hold what it held before (no leaks), conntrack entries
//! to the deleted backends must be gone once their lifetime is over (the
//! agent's sweep), and the agents' memory must be flat once warm: growth
//! is taken from the end of the churn's first third, by when the flow
//! store (4,096 records by default) has filled and buffers have reached
//! their working size.
//!
//! Full run: 3 minutes of churn (`FLEETNET_SOAK_SECONDS` sets another
//! length). Quick mode: 10 s.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use fleetnet_benches::{self as bench, Figure};
use fleetnet_testing::{
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, Node, SERVICE_PORT},
    rr::{self, Connection},
    side_by_side::{self, CLIENT, SERVER, VIP},
};

const GROUP: &str = "Churn soak (pods of c2 added and removed as the global Service's \
                     backends, connect-per-request load to its VIP from c1)";
/// Churn pods alive at once besides the server pod.
const LIVE: usize = 3;
/// Conntrack's longest lifetime of a flow that did not establish (TCP SYN,
/// UDP), plus the agent's sweep period and slack.
const CONNTRACK_SETTLES: Duration = Duration::from_secs(60 + 10 + 10);

fn main() {
    fleetnet_testing::require_root();
    let churn_for = Duration::from_secs(
        std::env::var("FLEETNET_SOAK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(bench::size(180, 10)),
    );
    let mut fleet = side_by_side::fleetnet(FleetSpec::new(2, 1, 2));
    let _echo = rr::Server::start(&fleet.pod(SERVER).netns, BACKEND_PORT).expect("echo server");
    let nodes = ["c1/n1", "c2/n1"];
    let before: Vec<Counts> = nodes.iter().map(|id| counts(fleet.node(id))).collect();
    let rss_start: Vec<u64> = nodes.iter().map(|id| rss_kib(fleet.node(id))).collect();

    let stop = AtomicBool::new(false);
    let mut changes = 0u32;
    let mut deleted_backends = Vec::new();
    // Resident memory through the churn, and once its first third (the
    // warm-up) is over.
    let mut rss_samples: Vec<(Duration, Vec<u64>)> = Vec::new();
    let mut rss_warm: Option<Vec<u64>> = None;
    let started = Instant::now();
    let client = fleet.pod(CLIENT).netns.alias();
    let load = thread::scope(|scope| {
        let client = &*client;
        let stop = &stop;
        let load = scope.spawn(move || {
            let (mut done, mut failed) = (0.0, 0);
            while !stop.load(Ordering::Relaxed) {
                let rate = rr::transactions(
                    client,
                    SocketAddrV4::new(VIP, SERVICE_PORT),
                    Connection::PerRequest,
                    Duration::from_secs(1),
                )
                .expect("connect-per-request load");
                done += rate.per_second;
                failed += rate.failed;
            }
            (done, failed)
        });
        // The fleet changes from this thread only; the load thread only
        // reads the client's namespace.
        let fleet = &mut fleet;
        let mut live: Vec<(String, rr::Server)> = Vec::new();
        while started.elapsed() < churn_for {
            let id = fleet.add_pod("c2/n1").expect("adding a pod");
            let server = rr::Server::start(&fleet.pod(&id).netns, BACKEND_PORT).expect("echo");
            live.push((id, server));
            set_backends(fleet, &live);
            changes += 2;
            if live.len() > LIVE {
                let (old, server) = live.remove(0);
                set_backends(fleet, &live);
                // New flows stop going to it before it goes.
                thread::sleep(Duration::from_millis(300));
                drop(server);
                deleted_backends.push(fleet.pod(&old).ip);
                fleet.remove_pod(&old).expect("removing a pod");
                changes += 2;
            }
            let rss: Vec<u64> = nodes.iter().map(|id| rss_kib(fleet.node(id))).collect();
            if rss_warm.is_none() && started.elapsed() >= churn_for / 3 {
                rss_warm = Some(rss.clone());
            }
            if rss_samples
                .last()
                .is_none_or(|(at, _)| started.elapsed() - *at >= churn_for / 18)
            {
                rss_samples.push((started.elapsed(), rss));
            }
            thread::sleep(Duration::from_millis(200));
        }
        set_backends(fleet, &[]);
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for (id, server) in live.drain(..) {
            drop(server);
            deleted_backends.push(fleet.pod(&id).ip);
            fleet.remove_pod(&id).expect("removing a pod");
        }
        load.join().unwrap()
    });
    let churned = started.elapsed();
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges after the churn");

    // Entries of the deleted backends still live once every lifetime is
    // over, and the maps' counts back where they were.
    let settled = Instant::now();
    let mut after: Vec<Counts>;
    loop {
        after = nodes.iter().map(|id| counts(fleet.node(id))).collect();
        if after == before || settled.elapsed() > CONNTRACK_SETTLES {
            break;
        }
        thread::sleep(Duration::from_secs(1));
    }
    let to_deleted: usize = nodes
        .iter()
        .map(|id| live_conntrack_to(fleet.node(id), &deleted_backends))
        .sum();
    let rss_after: Vec<u64> = nodes.iter().map(|id| rss_kib(fleet.node(id))).collect();
    if after != before {
        let now = fleetnet_agent::datapath::clock::monotonic_ns();
        for id in nodes {
            for (key, entry) in fleet.node(id).maps().conntrack().unwrap() {
                eprintln!(
                    "{id} conntrack entry left: {key:?} -> {entry:?}, {:.1} s to live",
                    (entry.expires as f64 - now as f64) / 1e9
                );
            }
        }
    }

    eprintln!(
        "{changes} changes in {churned:.0?} ({} pods deleted), {:.0} connections, {} failed",
        deleted_backends.len(),
        load.0,
        load.1
    );
    for (at, rss) in &rss_samples {
        eprintln!("RSS at {:>4} s: {rss:?} KiB", at.as_secs());
    }
    let mut leaked = 0i64;
    for ((id, before), after) in nodes.iter().zip(&before).zip(&after) {
        for (map, count) in &before.0 {
            let now = after.0[map];
            eprintln!("{id} {map}: {count} entries before, {now} after");
            leaked += (now as i64 - *count as i64).abs();
        }
    }
    let name = |what: &str| format!("{what} ({} s of churn)", churn_for.as_secs());
    Figure::new(GROUP, &name("changes"), f64::from(changes), "changes").record();
    Figure::new(
        GROUP,
        &name("map entries differing from before, both nodes"),
        leaked as f64,
        "entries",
    )
    .record();
    Figure::new(
        GROUP,
        &name("live conntrack entries to deleted backends after their lifetime"),
        to_deleted as f64,
        "entries",
    )
    .record();
    Figure::new(
        GROUP,
        &name("time for the maps to return to their counts"),
        settled.elapsed().as_secs_f64(),
        "s",
    )
    .record();
    let rss_warm = rss_warm.expect("a sample after the first third of the churn");
    for ((id, start), (warm, after)) in nodes
        .iter()
        .zip(&rss_start)
        .zip(rss_warm.iter().zip(&rss_after))
    {
        eprintln!(
            "{id} agent RSS: {start} KiB at the start, {warm} KiB after the first third, \
             {after} KiB after"
        );
        Figure::new(
            GROUP,
            &name(&format!("agent RSS growth after the first third, {id}")),
            (*after as f64 / *warm as f64 - 1.0) * 100.0,
            "%",
        )
        .record();
    }
    Figure::new(
        GROUP,
        &name("connections failed"),
        load.1 as f64,
        "connections",
    )
    .record();
}

/// Makes the server pod and `live` the backends of Service `perf` in c2.
fn set_backends(fleet: &FleetInABox, live: &[(String, rr::Server)]) {
    let mut pods = vec![(SERVER, true)];
    pods.extend(live.iter().map(|(id, _)| (id.as_str(), true)));
    fleet
        .write_endpoints(2, "perf", &pods)
        .expect("writing the endpoints");
}

/// Entries per map of a node's datapath (conntrack: all entries, expired
/// or not, as the map holds them).
#[derive(Debug, PartialEq)]
struct Counts(BTreeMap<&'static str, usize>);

fn counts(node: &Node) -> Counts {
    let maps = node.maps();
    Counts(BTreeMap::from([
        ("ipcache", maps.ipcache().unwrap().len()),
        ("endpoints", maps.endpoints().unwrap().len()),
        ("services", maps.services().unwrap().len()),
        ("backends", maps.backends().unwrap().len()),
        ("conntrack", maps.conntrack().unwrap().len()),
    ]))
}

/// Conntrack entries of `node` not yet expired whose backend (original
/// direction) or answering end (reply direction) is one of `deleted`.
fn live_conntrack_to(node: &Node, deleted: &[Ipv4Addr]) -> usize {
    let now = fleetnet_agent::datapath::clock::monotonic_ns();
    node.maps()
        .conntrack()
        .unwrap()
        .into_iter()
        .filter(|(key, entry)| {
            entry.expires >= now
                && deleted.iter().any(|ip| {
                    entry.addr == ip.octets() || key.src == ip.octets() || key.dst == ip.octets()
                })
        })
        .count()
}

/// The agent's resident memory.
fn rss_kib(node: &Node) -> u64 {
    let pid = node.agent_pid().expect("the agent runs");
    fleetnet_testing::resident_kib(pid).unwrap_or(0)
}
