//! The scenario `cargo xtask demo` shows, on a fleet in a box of 3
//! clusters x 2 nodes x 2 pods (p1 a client, p2 an echo server):
//!
//! 1. every pod pings every other pod across nodes and clusters, and the
//!    underlay carries VXLAN whose VNI names the sending cluster;
//! 2. a global Service defined in every cluster spreads one client's
//!    requests over the backends of all three clusters;
//! 3. an `affinity: local` Service stays in its cluster, fails over to the
//!    others when its local backends stop being ready, and comes back;
//! 4. a NetworkPolicy lets only cluster c2's p1 pods reach c1's p1 pods:
//!    the other pings fail, and `fleetnet observe` names the denied flows;
//! 5. `fleetnet status` and a metrics excerpt of one node.
//!
//! Each step checks what it shows and fails the demo when it did not
//! happen; the smoke test runs it without pauses.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use dataplane_common::DropReason;

use fleetnet_testing::{
    capture::Capture,
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, SERVICE_PORT, VXLAN_PORT},
    probe::{self, EchoServer},
    progress,
};

pub const CLUSTERS: u16 = 3;
const CLIENT: &str = "c1/n1/p1";
const GLOBAL: (&str, &str) = ("service.cilium.io/global", "true");
const REQUESTS: usize = 60;

pub struct Options {
    /// Between steps, so a reader can follow.
    pub pause: Duration,
    /// Leave the fleet running at the end.
    pub keep: bool,
}

/// What the demo showed, for the smoke test to check.
#[derive(Debug, Default)]
pub struct Shown {
    /// Requests of the global service answered, by backend cluster.
    pub spread: BTreeMap<String, usize>,
    /// Clusters answering the local-affinity service: before, during and
    /// after the failover.
    pub failover: [BTreeMap<String, usize>; 3],
    /// Packets c1's nodes dropped as policy_denied_ingress.
    pub denied: u64,
    /// Lines of `fleetnet observe` naming a denied flow.
    pub observed_drops: usize,
    pub status_healthy: bool,
    pub took: Duration,
}

fn failed(what: String) -> io::Error {
    io::Error::other(what)
}

pub fn run(options: &Options) -> io::Result<Shown> {
    let started = Instant::now();
    let mut shown = Shown::default();
    let pause = || std::thread::sleep(options.pause);
    progress(&format!(
        "==> building the fleet: etcd, {CLUSTERS} clusters x 2 nodes x 2 pods, each in its own network namespace"
    ));
    let fleet = FleetInABox::build(FleetSpec::new(CLUSTERS, 2, 2))?;
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
    pause();

    routing(&fleet)?;
    pause();
    let _servers = services(&fleet, &mut shown, &pause)?;
    pause();
    policy(&fleet, &mut shown)?;
    pause();

    let node = fleet.node("c1/n1");
    let status = node.fleetnet(&["status"])?;
    shown.status_healthy = status.status.success();
    progress("==> fleetnet status (on c1/n1)");
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        progress(&format!("    {line}"));
    }
    progress("==> a metrics excerpt (GET /metrics on c1/n1)");
    let metrics = node.metrics_text()?;
    for line in metrics.lines().filter(|line| {
        line.starts_with("fleetnet_service_selections_total{")
            || line.starts_with("fleetnet_policy_denials_total{")
            || line.starts_with("fleetnet_mesh_cluster_connected{")
            || (line.starts_with("fleetnet_forwarded_packets_total{")
                && line.contains("verdict=\"tunnelled\""))
    }) {
        progress(&format!("    {line}"));
    }

    if options.keep {
        progress(&fleet.keep_running()?);
        shown.took = started.elapsed();
        return Ok(shown);
    }
    progress("==> stopping the agents (programs detached, maps unpinned)");
    fleet.stop_agents()?;
    drop(fleet);
    shown.took = started.elapsed();
    progress(&format!(
        "==> done in {:.1?}; every namespace and pinned map removed",
        shown.took
    ));
    Ok(shown)
}

/// Every pod pings every other; the underlay shows whose VXLAN it carried.
fn routing(fleet: &FleetInABox) -> io::Result<()> {
    progress("==> every pod pings every other pod (o = answered, x = not)");
    let capture = Capture::start(&fleet.underlay, VXLAN_PORT)?;
    let answered = ping_matrix(fleet, Duration::from_secs(2))
        .iter()
        .flatten()
        .all(|ok| *ok);
    let packets = capture.finish().tunnelled;
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
    if !answered {
        return Err(failed("some pods could not reach each other".into()));
    }
    if by_vni.len() != CLUSTERS as usize {
        return Err(failed(format!(
            "expected VXLAN from {CLUSTERS} clusters, saw {by_vni:?}"
        )));
    }
    Ok(())
}

fn vip(cluster: u16, service: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 20, cluster as u8, service)
}

/// The echo servers (p2 of every node), serving until dropped.
fn services(
    fleet: &FleetInABox,
    shown: &mut Shown,
    pause: &dyn Fn(),
) -> io::Result<Vec<EchoServer>> {
    let backends: Vec<String> = fleet
        .pods()
        .filter(|(_, pod)| pod.name.ends_with("p2"))
        .map(|(_, pod)| pod.id.clone())
        .collect();
    let servers = backends
        .iter()
        .map(|id| {
            let pod = fleet.pod(id);
            EchoServer::start(&pod.netns, SocketAddr::from((pod.ip, BACKEND_PORT)), id)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let of = |cluster: u16| -> Vec<&str> {
        backends
            .iter()
            .filter(|id| id.starts_with(&format!("c{cluster}/")))
            .map(String::as_str)
            .collect()
    };
    progress(&format!(
        "==> Service web, annotated {}: \"{}\", defined in every cluster with its own ClusterIP; backends: the p2 pods",
        GLOBAL.0, GLOBAL.1
    ));
    let affinity = ("service.cilium.io/affinity", "local");
    for cluster in 1..=CLUSTERS {
        let ready: Vec<(&str, bool)> = of(cluster).into_iter().map(|id| (id, true)).collect();
        fleet.write_service(cluster, "web", vip(cluster, 10), &[GLOBAL])?;
        fleet.write_service(cluster, "near", vip(cluster, 11), &[GLOBAL, affinity])?;
        fleet.write_endpoints(cluster, "web", &ready)?;
        fleet.write_endpoints(cluster, "near", &ready)?;
    }
    let all = backends.len() as u16;
    let took = wait_for_backends(fleet, vip(1, 10), all)?;
    progress(&format!(
        "    c1/n1 load-balances web ({}) over {all} backends of {CLUSTERS} clusters, {took:.1?} after the manifests were written",
        vip(1, 10)
    ));
    shown.spread = requests(fleet, vip(1, 10))?;
    progress(&format!(
        "    {REQUESTS} requests from {CLIENT}, answered by cluster: {}",
        show(&shown.spread)
    ));
    if shown.spread.len() != CLUSTERS as usize {
        return Err(failed(format!(
            "requests reached only {}",
            show(&shown.spread)
        )));
    }
    pause();

    progress(&format!(
        "==> Service near, also annotated {}: \"{}\": c1's clients use c1's backends while one is ready",
        affinity.0, affinity.1
    ));
    wait_for_backends(fleet, vip(1, 11), of(1).len() as u16)?;
    shown.failover[0] = requests(fleet, vip(1, 11))?;
    progress(&format!("    answered by: {}", show(&shown.failover[0])));
    let not_ready: Vec<(&str, bool)> = of(1).into_iter().map(|id| (id, false)).collect();
    fleet.write_endpoints(1, "near", &not_ready)?;
    let remote = all - of(1).len() as u16;
    let took = wait_for_backends(fleet, vip(1, 11), remote)?;
    progress(&format!(
        "    c1's backends of near become not ready: c1/n1 fails over to the {remote} remote ones in {took:.1?}"
    ));
    shown.failover[1] = requests(fleet, vip(1, 11))?;
    progress(&format!("    answered by: {}", show(&shown.failover[1])));
    let ready: Vec<(&str, bool)> = of(1).into_iter().map(|id| (id, true)).collect();
    fleet.write_endpoints(1, "near", &ready)?;
    let took = wait_for_backends(fleet, vip(1, 11), of(1).len() as u16)?;
    progress(&format!(
        "    ready again: back to c1's own backends in {took:.1?}"
    ));
    shown.failover[2] = requests(fleet, vip(1, 11))?;
    progress(&format!("    answered by: {}", show(&shown.failover[2])));
    let only = |counts: &BTreeMap<String, usize>, local: bool| {
        !counts.is_empty() && counts.keys().all(|c| (c == "c1") == local)
    };
    if !(only(&shown.failover[0], true)
        && only(&shown.failover[1], false)
        && only(&shown.failover[2], true))
    {
        return Err(failed(format!(
            "local affinity did not hold, fail over and come back: {:?}",
            shown.failover
        )));
    }
    Ok(servers)
}

fn show(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(cluster, n)| format!("{cluster} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until c1/n1 serves `vip` with `count` backends.
fn wait_for_backends(fleet: &FleetInABox, vip: Ipv4Addr, count: u16) -> io::Result<Duration> {
    fleet
        .node("c1/n1")
        .wait_backends(vip, count, Duration::from_secs(15))
}

/// REQUESTS short TCP connections from the client to `vip`, counted by the
/// cluster of the pod that answered.
fn requests(fleet: &FleetInABox, vip: Ipv4Addr) -> io::Result<BTreeMap<String, usize>> {
    let netns = &fleet.pod(CLIENT).netns;
    let mut counts = BTreeMap::new();
    for i in 0..REQUESTS {
        let reply = probe::tcp_exchange(
            netns,
            SocketAddr::from((vip, SERVICE_PORT)),
            &format!("request {i}"),
            Duration::from_secs(3),
        )?;
        let cluster = reply.split('/').next().unwrap_or_default().to_string();
        *counts.entry(cluster).or_default() += 1;
    }
    Ok(counts)
}

/// A policy on c1's `app=p1` pods: ingress only from `app=p1` of cluster
/// c2. Their own cluster's `app=p1` is refused like everyone else.
fn policy(fleet: &FleetInABox, shown: &mut Shown) -> io::Result<()> {
    progress("==> NetworkPolicy in c1: pods labelled app=p1 accept only app=p1 pods of cluster c2");
    let written = fleet.write_policy(
        1,
        "only-c2-p1",
        "{ podSelector: { matchLabels: { app: p1 } }, ingress: [ { from: [ \
         { podSelector: { matchLabels: { app: p1, fleetnet.io/cluster: c2 } } } ] } ] }",
    )?;
    for (node, pod) in fleet
        .pods()
        .filter(|(node, pod)| node.cluster == "c1" && pod.name.ends_with("p1"))
    {
        while node.maps().endpoints().map_err(io::Error::other)?[&pod.ip.octets()].flags == 0 {
            if written.elapsed() > Duration::from_secs(10) {
                return Err(failed(format!(
                    "the policy was not applied on {} within 10 s",
                    node.id
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        progress(&format!(
            "    enforced on {} {:.1?} after the manifest was written",
            node.id,
            written.elapsed()
        ));
    }
    let node = fleet.node("c1/n1");
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
            .map_err(io::Error::other)?
            .iter()
            .filter(|(key, _)| key.reason == DropReason::PolicyDeniedIngress as u8)
            .map(|(_, value)| value.packets)
            .sum();
        shown.denied += denied;
        progress(&format!(
            "    {} counted {denied} packets as {}",
            node.id,
            DropReason::PolicyDeniedIngress.label()
        ));
    }
    // Drop events reach the agent within its reader's 200 ms pass.
    std::thread::sleep(Duration::from_millis(300));
    let observed = node.fleetnet(&["observe", "--verdict", "DROPPED", "--last", "3"])?;
    progress("==> fleetnet observe --verdict DROPPED --last 3 (on c1/n1)");
    for line in String::from_utf8_lossy(&observed.stdout).lines() {
        if line.contains("DROPPED policy_denied_ingress") {
            shown.observed_drops += 1;
        }
        progress(&format!("    {line}"));
    }
    fleet.delete_policy(1, "only-c2-p1")?;
    if !as_expected {
        return Err(failed(
            "the policy did not allow exactly c2's app=p1 pods".into(),
        ));
    }
    Ok(())
}

/// Prints the ping matrix; returns who answered whom (rows: from).
fn ping_matrix(fleet: &FleetInABox, timeout: Duration) -> Vec<Vec<bool>> {
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
