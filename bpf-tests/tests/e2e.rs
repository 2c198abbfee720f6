//! End to end on the fleet in a box: 2 clusters x 2 nodes x 2 pods, one
//! real agent per node. Every pod reaches every other by ping and TCP; the
//! underlay capture proves cross-node packets crossed VXLAN with the source
//! cluster as VNI; stopping the agents breaks cross-node traffic, which
//! proves the datapath (not the kernel's routing) did the work.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bpf_tests::{
    capture::Capture,
    fleet::{Fleet, FleetSpec, Node, Pod, VXLAN_PORT},
    probe::{self, EchoServer},
};
use dataplane_common::{Direction, DropReason, Verdict};

const ECHO_PORT: u16 = 7000;

/// A pod with the node that hosts it.
type Placed<'a> = (&'a Node, &'a Pod);

#[test]
fn pods_reach_each_other_across_nodes_and_clusters_through_the_datapath() {
    let started = Instant::now();
    let fleet = Fleet::build(FleetSpec {
        clusters: 2,
        nodes_per_cluster: 2,
        pods_per_node: 2,
    })
    .expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    let ready = started.elapsed();

    agents_found_their_pods_by_route(&fleet);

    let _servers: Vec<EchoServer> = fleet
        .pods()
        .map(|(_, pod)| {
            EchoServer::start(&pod.netns, SocketAddr::from((pod.ip, ECHO_PORT)), &pod.id)
                .expect("starting echo server")
        })
        .collect();
    let pairs: Vec<(Placed, Placed)> = fleet
        .pods()
        .flat_map(|src| fleet.pods().map(move |dst| (src, dst)))
        .filter(|((_, a), (_, b))| a.id != b.id)
        .collect();
    assert_eq!(pairs.len(), 56);

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
    let packets = capture.finish();
    assert!(
        failures.is_empty(),
        "with the datapath up:\n{}",
        failures.join("\n")
    );
    let connectivity = started.elapsed() - ready;

    // Cross-node pairs went through VXLAN between the right nodes, VNI =
    // source cluster; same-node pairs never touched the underlay.
    for ((src_node, src), (dst_node, dst)) in &pairs {
        let tunnelled: Vec<_> = packets
            .iter()
            .filter(|p| p.inner.src == src.ip && p.inner.dst == dst.ip)
            .collect();
        if src_node.id == dst_node.id {
            assert!(
                tunnelled.is_empty(),
                "{} -> {} is node-local but crossed the underlay",
                src.id,
                dst.id
            );
            continue;
        }
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
            assert_eq!(
                packet.inner.ttl, 63,
                "inner TTL of {} -> {} after one routing hop",
                src.id, dst.id
            );
        }
    }
    counters_show_the_datapath_did_the_work(&fleet);

    fleet.stop_agents().expect("agents stop cleanly on SIGTERM");
    for node in &fleet.nodes {
        assert!(
            !node.pin_dir.exists(),
            "{}: pins left behind after a clean stop",
            node.id
        );
    }
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
        "cross-node pings still answered without the datapath:\n{}",
        still_reachable.join("\n")
    );
    eprintln!(
        "e2e 2x2x2: agents ready in {ready:?}, 56 pairs x (ping + TCP) in {connectivity:?}, \
         {} VXLAN packets captured, total {:?}",
        packets.len(),
        started.elapsed()
    );
}

/// The agent discovered every pod's veth and MACs through the node's /32
/// route and netlink; the harness never told it the interface or MACs.
fn agents_found_their_pods_by_route(fleet: &Fleet) {
    for node in &fleet.nodes {
        let endpoints = node.maps().endpoints().unwrap();
        assert_eq!(endpoints.len(), node.pods.len(), "{}", node.id);
        for pod in &node.pods {
            let endpoint = endpoints[&pod.ip.octets()];
            assert_eq!(endpoint.mac, pod.mac, "{} pod MAC", pod.id);
            assert_eq!(endpoint.node_mac, pod.gateway_mac, "{} gateway MAC", pod.id);
        }
        let config = node.maps().node_config().unwrap();
        assert_eq!(
            (config.cluster_id, config.node_ip),
            (node.cluster_id, node.ip.octets())
        );
    }
}

fn counters_show_the_datapath_did_the_work(fleet: &Fleet) {
    for node in &fleet.nodes {
        let metrics = node.maps().metrics().unwrap();
        let packets = |reason: u8, direction: Direction, dst_cluster: Option<u16>| -> u64 {
            metrics
                .iter()
                .filter(|(key, _)| {
                    key.reason == reason
                        && key.direction == direction as u8
                        && dst_cluster.is_none_or(|cluster| key.dst_cluster == cluster)
                })
                .map(|(_, value)| value.packets)
                .sum()
        };
        for cluster in [1, 2] {
            assert!(
                packets(Verdict::Tunnelled as u8, Direction::Egress, Some(cluster)) > 0,
                "{}: nothing tunnelled to cluster {cluster}",
                node.id
            );
        }
        assert!(
            packets(Verdict::DeliveredLocal as u8, Direction::Ingress, None) > 0,
            "{}: nothing received from the overlay",
            node.id
        );
        assert!(
            packets(Verdict::DeliveredLocal as u8, Direction::Egress, None) > 0,
            "{}: nothing delivered node-locally",
            node.id
        );
        let drops: Vec<_> = metrics
            .iter()
            .filter(|(key, value)| DropReason::from_code(key.reason).is_some() && value.packets > 0)
            .collect();
        assert!(drops.is_empty(), "{}: unexpected drops {drops:?}", node.id);
    }
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
