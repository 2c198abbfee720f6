//! `cargo xtask demo`: a fleet in a box of 2 clusters x 2 nodes x 2 pods,
//! pods pinging each other across nodes and clusters through the eBPF
//! datapath, what crossed the underlay, the datapath's counters, a
//! NetworkPolicy that lets only cluster c2's `app=p1` pods reach c1's
//! `app=p1` pods (with `fleetnet observe` showing the drops and `fleetnet
//! status` one node's view), and proof that without the agents cross-node
//! traffic stops.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bpf_tests::{
    capture::Capture,
    fleet::{Fleet, FleetSpec, VXLAN_PORT, progress},
    probe,
};
use dataplane_common::{Direction, DropReason, Verdict};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => demo(false),
        ["--keep"] => demo(true),
        ["--down"] => Fleet::tear_down_kept().map(|removed| progress(&removed)),
        _ => Err(std::io::Error::other(
            "usage: fleetnet-demo [--keep | --down]",
        )),
    };
    if let Err(error) = result {
        eprintln!("demo: {error}");
        std::process::exit(1);
    }
}

fn demo(keep: bool) -> std::io::Result<()> {
    let started = Instant::now();
    let spec = FleetSpec::new(2, 2, 2);
    progress(
        "==> building the fleet: etcd, 2 clusters x 2 nodes x 2 pods, each in its own network namespace",
    );
    let fleet = Fleet::build(spec)?;
    progress(&format!(
        "==> starting {} agents (each knows only etcd, its cluster and its manifests directory)",
        fleet.nodes.len()
    ));
    fleet.start_agents()?;
    let converged = fleet.wait_converged(Duration::from_secs(30))?;
    progress(&format!(
        "==> every node learned every pod through etcd ({converged:.1?} after the agents were ready)"
    ));
    for node in &fleet.nodes {
        let pods: Vec<String> = node.pods.iter().map(|pod| pod.ip.to_string()).collect();
        progress(&format!(
            "    {}  underlay {}  pod CIDR {}  pods {}",
            node.id,
            node.ip,
            node.pod_cidr,
            pods.join(" ")
        ));
    }

    progress("==> every pod pings every other pod (o = answered, x = not)");
    let capture = Capture::start(&fleet.underlay, VXLAN_PORT)?;
    let answered = ping_matrix(&fleet, Duration::from_secs(2))
        .iter()
        .flatten()
        .all(|ok| *ok);
    let packets = capture.finish();
    let mut by_vni: BTreeMap<u32, usize> = BTreeMap::new();
    for packet in &packets {
        *by_vni.entry(packet.vni).or_default() += 1;
    }
    progress(&format!(
        "==> {} VXLAN packets crossed the underlay; by VNI (= sending cluster): {}",
        packets.len(),
        by_vni
            .iter()
            .map(|(vni, count)| format!("cluster {vni}: {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    progress("==> datapath counters per node (packets)");
    for node in &fleet.nodes {
        let metrics = node.maps().metrics().map_err(std::io::Error::other)?;
        let mut line = Vec::new();
        for (key, value) in &metrics {
            let what = match (
                Verdict::from_code(key.reason),
                DropReason::from_code(key.reason),
            ) {
                (Some(verdict), _) => verdict.label(),
                (_, Some(reason)) => reason.label(),
                _ => "unknown",
            };
            let direction = Direction::from_code(key.direction).map_or("?", Direction::label);
            line.push(format!(
                "{what}/{direction} c{}->c{}: {}",
                key.src_cluster, key.dst_cluster, value.packets
            ));
        }
        line.sort();
        progress(&format!("    {}: {}", node.id, line.join(", ")));
    }
    if !answered {
        return Err(std::io::Error::other(
            "some pods could not reach each other",
        ));
    }
    policy(&fleet)?;
    let status = fleet.node("c1/n1").fleetnet(&["status"])?;
    progress("==> fleetnet status (on c1/n1)");
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        progress(&format!("    {line}"));
    }

    if keep {
        let notes = fleet.keep_running()?;
        progress(&notes);
        return Ok(());
    }
    progress("==> stopping the agents (programs detached): cross-node pings now fail");
    fleet.stop_agents()?;
    ping_matrix(&fleet, Duration::from_millis(500));
    drop(fleet);
    progress(&format!(
        "==> done in {:.1?}; every namespace and pinned map removed",
        started.elapsed()
    ));
    Ok(())
}

/// A policy on c1's `app=p1` pods: ingress only from `app=p1` of cluster
/// c2. Their own cluster's `app=p1` is refused like everyone else.
fn policy(fleet: &Fleet) -> std::io::Result<()> {
    progress("==> NetworkPolicy in c1: pods labelled app=p1 accept only app=p1 pods of cluster c2");
    let written = fleet.write_policy(
        1,
        "only-c2-p1",
        "{ podSelector: { matchLabels: { app: p1 } }, ingress: [ { from: [ \
         { podSelector: { matchLabels: { app: p1, fleetnet.io/cluster: c2 } } } ] } ] }",
    )?;
    let target = fleet.pod("c1/n1/p1");
    let node = fleet.node("c1/n1");
    while node.maps().endpoints().map_err(std::io::Error::other)?[&target.ip.octets()].flags == 0 {
        if written.elapsed() > Duration::from_secs(10) {
            return Err(std::io::Error::other(
                "the policy was not applied within 10 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    progress(&format!(
        "    enforced on c1/n1 {:.1?} after the manifest was written",
        written.elapsed()
    ));
    let results = ping_matrix(fleet, Duration::from_secs(1));
    let pods: Vec<&str> = fleet.pods().map(|(_, pod)| pod.id.as_str()).collect();
    let as_expected = pods.iter().zip(&results).all(|(src, row)| {
        pods.iter().zip(row).all(|(dst, ok)| {
            let protected = dst.starts_with("c1/") && dst.ends_with("/p1");
            let allowed = !protected || (src.starts_with("c2/") && src.ends_with("/p1"));
            *ok == allowed || src == dst
        })
    });
    for node in fleet.nodes.iter().filter(|node| node.cluster == "c1") {
        let denied: u64 = node
            .maps()
            .metrics()
            .map_err(std::io::Error::other)?
            .iter()
            .filter(|(key, _)| key.reason == DropReason::PolicyDeniedIngress as u8)
            .map(|(_, value)| value.packets)
            .sum();
        progress(&format!(
            "    {} counted {denied} packets as {}",
            node.id,
            DropReason::PolicyDeniedIngress.label()
        ));
    }
    let observed = node.fleetnet(&["observe", "--verdict", "DROPPED", "--last", "3"])?;
    progress("==> fleetnet observe --verdict DROPPED --last 3 (on c1/n1)");
    for line in String::from_utf8_lossy(&observed.stdout).lines() {
        progress(&format!("    {line}"));
    }
    fleet.delete_policy(1, "only-c2-p1")?;
    if !as_expected {
        return Err(std::io::Error::other(
            "the policy did not allow exactly c2's app=p1 pods",
        ));
    }
    Ok(())
}

/// Prints the ping matrix; returns who answered whom (rows: from).
fn ping_matrix(fleet: &Fleet, timeout: Duration) -> Vec<Vec<bool>> {
    let pods: Vec<_> = fleet.pods().map(|(_, pod)| pod).collect();
    let results: Vec<Vec<bool>> = std::thread::scope(|scope| {
        let rows: Vec<_> = pods
            .iter()
            .map(|src| {
                let pods = &pods;
                scope.spawn(move || {
                    pods.iter()
                        .map(|dst| {
                            src.id == dst.id
                                || probe::ping(&src.netns, dst.ip, timeout).unwrap_or(false)
                        })
                        .collect()
                })
            })
            .collect();
        rows.into_iter()
            .map(|row| row.join().unwrap_or_default())
            .collect()
    });
    let header: Vec<String> = pods.iter().map(|pod| format!("{:>9}", pod.id)).collect();
    progress(&format!("    {:>9} {}", "from\\to", header.join("")));
    for (src, row) in pods.iter().zip(&results) {
        let cells: Vec<String> = row
            .iter()
            .zip(&pods)
            .map(|(ok, dst)| {
                format!(
                    "{:>9}",
                    if src.id == dst.id {
                        "-"
                    } else if *ok {
                        "o"
                    } else {
                        "x"
                    }
                )
            })
            .collect();
        progress(&format!("    {:>9} {}", src.id, cells.join("")));
    }
    results
}
