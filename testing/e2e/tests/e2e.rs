//! End to end on the fleet in a box: 3 clusters x 2 nodes x 2 pods, one
//! real agent per node given only etcd, its cluster's identity and its
//! cluster's manifests directory.
//!
//! - every pod reaches every other (ping and TCP), across nodes and
//!   clusters, and the underlay capture shows cross-node packets in VXLAN
//!   with the source cluster as VNI between the right nodes, or, with
//!   every cluster routed natively over a routed underlay, unencapsulated
//!   and never in VXLAN;
//! - pods added in one cluster become reachable from the others, removed
//!   ones disappear (with the convergence time measured over 50 changes);
//! - a killed agent's endpoints disappear from other clusters within the
//!   lease TTL, and the agent restarted reconciles without duplicates;
//! - stopping the agents breaks cross-node traffic in the tunnelled mesh:
//!   the datapath did it (a routed underlay routes pods by itself; there
//!   the counters show the datapath routed every packet).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use dataplane_common::{Direction, DropReason, Verdict};
use fleetnet_agent::api::status::StatusReport;
use fleetnet_testing::{
    capture::Capture,
    fleet_in_a_box::{FleetInABox, FleetSpec, Node, Pod, VXLAN_PORT, agent_binary},
    http::http_get,
    probe::{self, EchoServer},
};

const ECHO_PORT: u16 = 7000;
const LEASE_TTL: u64 = 3;

/// A pod with the node that hosts it.
type Placed<'a> = (&'a Node, &'a Pod);

#[test]
fn a_three_cluster_mesh_built_from_etcd() {
    three_cluster_mesh(FleetSpec::new(3, 2, 2));
}

#[test]
fn natively_routed_three_cluster_mesh() {
    three_cluster_mesh(FleetSpec::new(3, 2, 2).native());
}

fn three_cluster_mesh(mut spec: FleetSpec) {
    let started = Instant::now();
    let native = spec.routed_underlay;
    spec.lease_ttl_seconds = LEASE_TTL;
    let mut fleet = FleetInABox::build(spec).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    let ready = started.elapsed();
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("initial convergence");
    agents_found_their_pods_by_route(&fleet);

    every_pod_reaches_every_other(&fleet, native);
    counters_show_the_datapath_did_the_work(&fleet, native);
    let bytes_before = etcd_bytes_written(&fleet);

    // 25 pods added across the fleet and 25 removed: how long until every
    // node of the other clusters has (or has dropped) the pod.
    let mut added = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..25 {
        let node = fleet.nodes[i % fleet.nodes.len()].id.clone();
        let (id, written) = fleet.add_pod_at(&node).unwrap();
        let ip = fleet.pod(&id).ip;
        latencies.push(until_other_clusters(
            &fleet,
            fleet.node(&node),
            ip,
            true,
            written,
        ));
        added.push(id);
    }
    let (new_pod, far_cluster_pod) = (added[0].clone(), fleet.node("c3/n2").pods[0].id.clone());
    let reached = probe::ping(
        &fleet.pod(&far_cluster_pod).netns,
        fleet.pod(&new_pod).ip,
        Duration::from_secs(3),
    );
    assert!(
        reached.unwrap(),
        "{far_cluster_pod} cannot reach the newly added {new_pod}"
    );
    let changes_bytes = etcd_bytes_written(&fleet) - bytes_before;
    for id in &added {
        let gone_ip = fleet.pod(id).ip;
        let host = fleet
            .nodes
            .iter()
            .position(|n| n.pods.iter().any(|p| &p.id == id))
            .unwrap();
        let removed = fleet.remove_pod(id).unwrap();
        latencies.push(until_other_clusters(
            &fleet,
            &fleet.nodes[host],
            gone_ip,
            false,
            removed,
        ));
    }
    fleet
        .wait_converged(Duration::from_secs(10))
        .expect("convergence after the changes");
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    eprintln!(
        "convergence over {} pod changes (manifest written -> ipcache on every node of the other clusters): \
         median {:?}, p99 {:?}, max {:?}; etcd bytes written for the 25 additions: {changes_bytes} ({} per pod)",
        latencies.len(),
        percentile(0.5),
        percentile(0.99),
        latencies.last().unwrap(),
        changes_bytes / 25,
    );

    // Kill one agent: its keys outlive it by the lease TTL, no more.
    let victim = fleet.node("c2/n2");
    // Its pods' /32s and its pod CIDR both go: nothing resolves any more.
    let victim_pods: Vec<Ipv4Addr> = victim.pods.iter().map(|pod| pod.ip).collect();
    let observers: Vec<&Node> = fleet
        .nodes
        .iter()
        .filter(|node| node.cluster != "c2")
        .collect();
    victim.kill_agent();
    let killed = Instant::now();
    let resolved = |node: &&Node| {
        victim
            .pods
            .iter()
            .all(|pod| knows_pod(&node.maps(), pod.ip, victim.ip))
    };
    assert!(
        observers.iter().all(resolved),
        "the victim's pods must still resolve until its lease expires"
    );
    let gone = holds_within(Duration::from_secs(LEASE_TTL + 5), || {
        observers.iter().all(|node| {
            victim_pods
                .iter()
                .all(|pod| node.maps().ipcache_lookup(*pod).is_none())
        })
    });
    let disappeared = killed.elapsed();
    assert!(
        gone,
        "a dead agent's endpoints were still in other clusters' maps after {disappeared:?}"
    );
    assert!(
        disappeared <= Duration::from_secs(LEASE_TTL + 2),
        "endpoints took {disappeared:?} to disappear with a {LEASE_TTL} s lease"
    );
    eprintln!(
        "killed agent's endpoints gone from the other clusters after {disappeared:?} (lease TTL {LEASE_TTL} s)"
    );

    // Restart it: it takes its keys over, and nothing is duplicated.
    victim.start_agent(&agent_binary()).unwrap();
    victim.wait_ready(Duration::from_secs(30)).unwrap();
    fleet
        .wait_converged(Duration::from_secs(20))
        .expect("convergence after the restart");
    let endpoint_keys = fleet.etcd_keys("/fleetnet/v1/endpoints/").unwrap();
    assert_eq!(
        endpoint_keys.len(),
        fleet.pods().count(),
        "endpoint keys: {endpoint_keys:#?}"
    );
    let node_keys = fleet.etcd_keys("/fleetnet/v1/nodes/").unwrap();
    assert_eq!(
        node_keys.len(),
        fleet.nodes.len(),
        "node keys: {node_keys:#?}"
    );
    let leaders = fleet.etcd_keys("/fleetnet/v1/leaders/").unwrap();
    assert_eq!(leaders.len(), 3, "one leader per cluster: {leaders:?}");
    every_pod_reaches_every_other(&fleet, native);

    rss_at_idle(&fleet);
    for node in &fleet.nodes {
        node.assert_untroubled();
    }

    // Without the datapath, cross-node traffic stops.
    fleet.stop_agents().expect("agents stop cleanly on SIGTERM");
    for node in &fleet.nodes {
        assert!(
            !node.pin_dir.exists(),
            "{}: pins left behind after a clean stop",
            node.id
        );
    }
    if !native {
        cross_node_traffic_stops(&fleet);
    }
    eprintln!(
        "e2e 3x2x2 ({}): agents ready in {ready:?}, total {:?}",
        if native { "native" } else { "tunnel" },
        started.elapsed()
    );
}

/// Without the datapath, nothing carries pods' packets between nodes.
fn cross_node_traffic_stops(fleet: &FleetInABox) {
    let pairs = pairs(fleet);
    let cross_node: Vec<_> = pairs
        .iter()
        .filter(|((a, _), (b, _))| a.id != b.id)
        .copied()
        .collect();
    let still_reachable = in_parallel(&cross_node, |((_, src), (_, dst))| {
        match probe::ping(&src.netns, dst.ip, Duration::from_millis(800)) {
            Ok(false) => Vec::new(),
            other => vec![format!("{} -> {}: {other:?}", src.id, dst.id)],
        }
    });
    assert!(
        still_reachable.is_empty(),
        "reachable without the datapath:\n{}",
        still_reachable.join("\n")
    );
}

/// etcd goes down: traffic keeps flowing on the last state; pods change
/// on both sides meanwhile; etcd comes back: every node converges to the
/// truth, with nothing stale and nothing duplicated.
#[test]
fn an_etcd_outage_keeps_traffic_flowing_and_recovery_reconciles() {
    let mut fleet = FleetInABox::build(FleetSpec::new(2, 1, 2)).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("initial convergence");

    fleet.etcd.kill();
    let (a, b) = (
        fleet.node("c1/n1").pods[0].id.clone(),
        fleet.node("c2/n1").pods[0].id.clone(),
    );
    for (src, dst) in [(&a, &b), (&b, &a)] {
        let reached = probe::ping(
            &fleet.pod(src).netns,
            fleet.pod(dst).ip,
            Duration::from_secs(3),
        )
        .unwrap();
        assert!(reached, "{src} -> {dst} failed during the etcd outage");
    }
    let leaving = fleet.node("c1/n1").pods[1].id.clone();
    let leaving_ip = fleet.pod(&leaving).ip;
    fleet.remove_pod(&leaving).unwrap();
    let arriving = fleet.add_pod("c2/n1").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let other = fleet.node("c2/n1").maps();
    assert!(
        other
            .ipcache_lookup(leaving_ip)
            .is_some_and(|e| e.identity != dataplane_common::identity::cluster_pods(e.cluster_id)),
        "without etcd, c2 cannot have learned that {leaving} left: it keeps the last state"
    );

    fleet.etcd.restart().expect("restarting etcd");
    let recovered = fleet
        .wait_converged(Duration::from_secs(30))
        .expect("convergence after the outage");
    eprintln!("after etcd came back the mesh converged in {recovered:?}");
    let reached = probe::ping(
        &fleet.pod(&a).netns,
        fleet.pod(&arriving).ip,
        Duration::from_secs(3),
    )
    .unwrap();
    assert!(
        reached,
        "{a} cannot reach {arriving}, added during the outage"
    );
    let endpoint_keys = fleet.etcd_keys("/fleetnet/v1/endpoints/").unwrap();
    assert_eq!(
        endpoint_keys.len(),
        fleet.pods().count(),
        "endpoint keys: {endpoint_keys:#?}"
    );
}

/// A cluster registering pod CIDRs that overlap a member's is refused by
/// every agent as a whole: an error in the log, a metric, and none of its
/// entries in any map. The members keep talking.
#[test]
fn a_cluster_overlapping_a_member_is_refused_with_a_log_and_a_metric() {
    let fleet = FleetInABox::build(FleetSpec::new(2, 1, 1)).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("initial convergence");
    fleet
        .etcd_put("/fleetnet/v1/cluster-ids/9", "rogue")
        .unwrap();
    fleet
        .etcd_put(
            "/fleetnet/v1/clusters/rogue",
            r#"{"v":1,"id":9,"pod_cidrs":["10.1.128.0/17"]}"#,
        )
        .unwrap();
    fleet
        .etcd_put(
            "/fleetnet/v1/nodes/rogue/x",
            r#"{"v":1,"ip":"198.18.9.9","pod_cidrs":["10.1.200.0/24"]}"#,
        )
        .unwrap();
    // /status lists the refusal as soon as /metrics counts it: both are
    // written from one state after each batch of mesh events.
    for node in &fleet.nodes {
        // The series appears with the refusal: missing until then.
        let counted = holds_within(Duration::from_secs(10), || {
            let series = r#"fleetnet_mesh_cluster_refused{target_cluster="rogue"}"#;
            node.metric(series).ok().flatten() == Some(1.0)
        });
        assert!(counted, "{}: the refusal is not counted", node.id);
        let status = http_get(&node.netns, node.metrics_address(), "/status").unwrap();
        let status: StatusReport = serde_json::from_str(&status).unwrap();
        assert!(
            status.refused.iter().any(|refused| refused.name == "rogue"),
            "{}: /metrics counts the refusal, /status does not list it: {:?}",
            node.id,
            status.refused
        );
    }
    for node in &fleet.nodes {
        assert!(
            node.log().contains("refusing cluster")
                && node.log().contains("overlaps cluster c1's 10.1.0.0/16"),
            "{}: no error naming the overlap:\n{}",
            node.id,
            node.log()
        );
        let ipcache = node.maps().ipcache().unwrap();
        assert!(
            !ipcache.contains_key(&"10.1.200.0/24".parse().unwrap()),
            "{}: the refused node is programmed",
            node.id
        );
    }
    let (a, b) = (&fleet.node("c1/n1").pods[0], &fleet.node("c2/n1").pods[0]);
    assert!(
        probe::ping(&a.netns, b.ip, Duration::from_secs(3)).unwrap(),
        "members stopped talking"
    );
}

fn pairs(fleet: &FleetInABox) -> Vec<(Placed<'_>, Placed<'_>)> {
    fleet
        .pods()
        .flat_map(|src| fleet.pods().map(move |dst| (src, dst)))
        .filter(|((_, a), (_, b))| a.id != b.id)
        .collect()
}

/// Ping and a TCP exchange between every ordered pair of pods, with the
/// underlay capture checking how cross-node packets travelled: in VXLAN,
/// or `native`ly, unencapsulated.
fn every_pod_reaches_every_other(fleet: &FleetInABox, native: bool) {
    let _servers: Vec<EchoServer> = fleet
        .pods()
        .map(|(_, pod)| {
            EchoServer::start(&pod.netns, SocketAddr::from((pod.ip, ECHO_PORT)), &pod.id).unwrap()
        })
        .collect();
    let pairs = pairs(fleet);
    let capture = Capture::start(&fleet.underlay, VXLAN_PORT).expect("capturing on the underlay");
    let failures = in_parallel(&pairs, |((_, src), (_, dst))| {
        let mut problems = Vec::new();
        match probe::ping(&src.netns, dst.ip, Duration::from_secs(3)) {
            Ok(true) => {}
            other => problems.push(format!("ping {} -> {}: {other:?}", src.id, dst.id)),
        }
        let server = SocketAddr::from((dst.ip, ECHO_PORT));
        match probe::tcp_exchange(&src.netns, server, &src.id, Duration::from_secs(3)) {
            Ok(reply) if reply == format!("{}:{}", dst.id, src.id) => {}
            other => problems.push(format!("tcp {} -> {}: {other:?}", src.id, dst.id)),
        }
        problems
    });
    let captured = capture.finish();
    assert!(
        failures.is_empty(),
        "{} of {} pairs failed:\n{}",
        failures.len(),
        pairs.len(),
        failures.join("\n")
    );
    for ((src_node, src), (dst_node, dst)) in &pairs {
        let tunnelled: Vec<_> = captured
            .tunnelled
            .iter()
            .filter(|p| p.inner.src == src.ip && p.inner.dst == dst.ip)
            .collect();
        let routed = captured
            .plain
            .iter()
            .filter(|p| p.src == src.ip && p.dst == dst.ip)
            .count();
        if src_node.id == dst_node.id {
            assert!(
                tunnelled.is_empty() && routed == 0,
                "{} -> {} is node-local but crossed the underlay",
                src.id,
                dst.id
            );
            continue;
        }
        if native {
            assert!(
                tunnelled.is_empty() && routed > 0,
                "{} -> {}: {} VXLAN and {routed} unencapsulated packets on the underlay; \
                 want only unencapsulated ones",
                src.id,
                dst.id,
                tunnelled.len()
            );
            continue;
        }
        assert!(
            routed == 0,
            "{} -> {} crossed the underlay unencapsulated",
            src.id,
            dst.id
        );
        assert!(
            !tunnelled.is_empty(),
            "no VXLAN packet seen for {} -> {}",
            src.id,
            dst.id
        );
        for packet in tunnelled {
            assert_eq!(
                packet.vni,
                u32::from(src_node.cluster_id),
                "VNI of {} -> {}",
                src.id,
                dst.id
            );
            assert_eq!(
                (packet.outer_src, packet.outer_dst),
                (src_node.ip, dst_node.ip),
                "outer IPs of {} -> {}",
                src.id,
                dst.id
            );
        }
    }
}

/// True when `map` resolves `ip` to a pod endpoint (its own /32 with an
/// endpoint identity), not just to the pod CIDR of the node it is on.
fn knows_pod(map: &fleetnet_agent::datapath::DatapathMaps, ip: Ipv4Addr, node: Ipv4Addr) -> bool {
    map.ipcache_lookup(ip).is_some_and(|entry| {
        entry.tunnel_endpoint == node.octets()
            && entry.identity != dataplane_common::identity::cluster_pods(entry.cluster_id)
    })
}

/// Time from `since` until every node outside `host`'s cluster resolves
/// the pod at `ip` (`present`), or no longer does.
fn until_other_clusters(
    fleet: &FleetInABox,
    host: &Node,
    ip: Ipv4Addr,
    present: bool,
    since: Instant,
) -> Duration {
    let maps: Vec<_> = fleet
        .nodes
        .iter()
        .filter(|node| node.cluster != host.cluster)
        .map(|node| node.maps())
        .collect();
    let done = holds_within(Duration::from_secs(10), || {
        maps.iter()
            .all(|map| knows_pod(map, ip, host.ip) == present)
    });
    assert!(
        done,
        "{ip} on {}: the other clusters' ipcaches never agreed it is present={present}",
        host.id
    );
    since.elapsed()
}

/// The agent discovered every pod's veth and MACs through the node's /32
/// route and netlink; nobody told it the interface or the MACs.
fn agents_found_their_pods_by_route(fleet: &FleetInABox) {
    for node in &fleet.nodes {
        let endpoints = node.maps().endpoints().unwrap();
        assert_eq!(endpoints.len(), node.pods.len(), "{}", node.id);
        for pod in &node.pods {
            let endpoint = endpoints[&pod.ip.octets()];
            assert_eq!(endpoint.mac, pod.mac, "{} pod MAC", pod.id);
            assert_eq!(endpoint.node_mac, pod.gateway_mac, "{} gateway MAC", pod.id);
            assert_eq!(
                dataplane_common::identity::cluster_of(endpoint.identity),
                node.cluster_id,
                "{} identity",
                pod.id
            );
        }
        let config = node.maps().node_config().unwrap();
        assert_eq!(
            (config.cluster_id, config.node_ip),
            (node.cluster_id, node.ip.octets())
        );
    }
    // Pods labelled alike share one identity across the nodes of a cluster.
    let identity_of = |node: &str, pod: usize| {
        let node = fleet.node(node);
        node.maps().endpoints().unwrap()[&node.pods[pod].ip.octets()].identity
    };
    assert_eq!(
        identity_of("c1/n1", 0),
        identity_of("c1/n2", 0),
        "same labels, same identity"
    );
    assert_ne!(
        identity_of("c1/n1", 0),
        identity_of("c1/n1", 1),
        "different labels, different identities"
    );
}

fn counters_show_the_datapath_did_the_work(fleet: &FleetInABox, native: bool) {
    let (sent, how) = if native {
        (Verdict::Routed, "routed natively")
    } else {
        (Verdict::Tunnelled, "tunnelled")
    };
    for node in &fleet.nodes {
        let metrics = node.maps().metrics().unwrap();
        let packets = |reason: u8, direction: Direction| -> u64 {
            metrics
                .iter()
                .filter(|(key, _)| key.reason == reason && key.direction == direction as u8)
                .map(|(_, value)| value.packets)
                .sum()
        };
        assert!(
            packets(sent as u8, Direction::Egress) > 0,
            "{}: nothing {how}",
            node.id
        );
        assert!(
            packets(Verdict::DeliveredLocal as u8, Direction::Ingress) > 0,
            "{}: nothing delivered from other nodes",
            node.id
        );
        let drops: Vec<_> = metrics
            .iter()
            .filter(|(key, value)| DropReason::from_code(key.reason).is_some() && value.packets > 0)
            .collect();
        assert!(drops.is_empty(), "{}: unexpected drops {drops:?}", node.id);
    }
}

/// Key and value bytes every agent wrote to etcd, from their metrics.
fn etcd_bytes_written(fleet: &FleetInABox) -> u64 {
    fleet
        .nodes
        .iter()
        .map(|node| metric(node, "fleetnet_etcd_bytes_written_total"))
        .sum::<f64>() as u64
}

fn metric(node: &Node, name: &str) -> f64 {
    node.metric(name)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} missing from {}'s metrics", node.id))
}

fn rss_at_idle(fleet: &FleetInABox) {
    std::thread::sleep(Duration::from_secs(1));
    let rss: Vec<u64> = fleet
        .nodes
        .iter()
        .filter_map(|node| node.agent_pid())
        .map(|pid| fleetnet_testing::resident_kib(pid).unwrap_or(0))
        .collect();
    let max = rss.iter().max().copied().unwrap_or(0);
    let mean = rss.iter().sum::<u64>() / rss.len().max(1) as u64;
    eprintln!(
        "agent RSS at idle with the 3x2x2 fleet: mean {mean} KiB, max {max} KiB over {} agents",
        rss.len()
    );
}

/// True once `condition` holds, looked at every 2 ms; false after `timeout`.
fn holds_within(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    fleetnet_testing::poll(timeout, Duration::from_millis(2), || {
        condition().then_some(())
    })
    .is_some()
}

/// Runs `check` for every item on its own thread; returns all problems.
fn in_parallel<T: Sync>(items: &[T], check: impl Fn(&T) -> Vec<String> + Sync) -> Vec<String> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(|| check(item)))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("probe thread"))
            .collect()
    })
}
