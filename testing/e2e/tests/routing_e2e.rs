//! Routing modes end to end, on 3 clusters x 1 node x 1 pod over a routed
//! underlay (a router holding every node's pod CIDR):
//!
//! - c1 routes natively except towards c3, c2 natively, c3 tunnels: c1 and
//!   c2 reach each other unencapsulated, c1 and c3 agree on the tunnel, and
//!   c2 and c3 disagree, so both tunnel and report the mismatch (log,
//!   metric, status); every pod still reaches every other;
//! - a packet with c2's pod address reaches c1's pod only by the way c1
//!   would answer it (the router): sent straight to c1's node by another
//!   host on the segment it is dropped as spoofed, and so is one from c3's
//!   tunnelled pod sent unencapsulated.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use dataplane_common::{Direction, DropReason};
use fleetnet_testing::{
    capture::Capture,
    fleet_in_a_box::{FleetInABox, FleetSpec, ROUTER_IP, VXLAN_PORT},
    netns::Netns,
    probe,
};

const POD_PORT: u16 = 9000;

fn mixed_fleet() -> FleetInABox {
    let spec = FleetSpec {
        routed_underlay: true,
        cluster_routing: |cluster| {
            match cluster {
                1 => "{ mode: native, peers: { c3: tunnel } }",
                2 => "{ mode: native }",
                _ => "{ mode: tunnel }",
            }
            .to_string()
        },
        ..FleetSpec::new(3, 1, 1)
    };
    let fleet = FleetInABox::build(spec).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    fleet
}

#[test]
fn routing_modes_agree_per_peer_and_a_mismatch_tunnels() {
    let fleet = mixed_fleet();
    let native_pairs = [("c1", "c2"), ("c2", "c1")];

    // What each node's ipcache says of the others' pods.
    for (node, peer, native) in [
        ("c1", "c2", true),
        ("c1", "c3", false),
        ("c2", "c1", true),
        ("c2", "c3", false),
        ("c3", "c1", false),
        ("c3", "c2", false),
    ] {
        let pod = fleet.node(&format!("{peer}/n1")).pods[0].ip;
        let entry = fleet
            .node(&format!("{node}/n1"))
            .maps()
            .ipcache_lookup(pod)
            .unwrap_or_else(|| panic!("{node} does not know {peer}'s pod"));
        assert_eq!(entry.is_native(), native, "{node} -> {peer}");
    }

    // The mismatch, on both sides of it and nowhere else.
    for (node, peer, mismatch) in [
        ("c2", "c3", 1.0),
        ("c3", "c2", 1.0),
        ("c1", "c3", 0.0),
        ("c1", "c2", 0.0),
    ] {
        let series = format!("fleetnet_mesh_cluster_routing_mismatch{{target_cluster=\"{peer}\"}}");
        let node = fleet.node(&format!("{node}/n1"));
        // The gauges are refreshed once a second.
        let value =
            fleetnet_testing::poll(Duration::from_secs(3), Duration::from_millis(50), || {
                node.metric(&series).ok().flatten()
            })
            .map(|(value, _)| value);
        assert_eq!(value, Some(mismatch), "{}: {series}", node.id);
    }
    let status = fleet.node("c2/n1").fleetnet(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(
            "cluster c3 is tunnelled for a routing mismatch: this cluster routes native \
             towards it, it routes tunnel back"
        ),
        "{text}"
    );
    let log = fleet.node("c3/n1").log();
    assert!(
        log.contains(
            "routing mismatch: this cluster routes tunnel towards c2, which routes native back"
        ),
        "c3's log says nothing of the mismatch:\n{log}"
    );

    // Every pod reaches every other, natively or tunnelled as agreed.
    let capture = Capture::start(&fleet.underlay, VXLAN_PORT).unwrap();
    for from in ["c1", "c2", "c3"] {
        for to in ["c1", "c2", "c3"].into_iter().filter(|to| *to != from) {
            let (src, dst) = (
                &fleet.node(&format!("{from}/n1")).pods[0],
                fleet.node(&format!("{to}/n1")).pods[0].ip,
            );
            assert!(
                probe::ping(&src.netns, dst, Duration::from_secs(3)).unwrap(),
                "{from} -> {to}"
            );
        }
    }
    let captured = capture.finish();
    for from in ["c1", "c2", "c3"] {
        for to in ["c1", "c2", "c3"].into_iter().filter(|to| *to != from) {
            let (src, dst) = (
                fleet.node(&format!("{from}/n1")).pods[0].ip,
                fleet.node(&format!("{to}/n1")).pods[0].ip,
            );
            let tunnelled = captured
                .tunnelled
                .iter()
                .filter(|p| p.inner.src == src && p.inner.dst == dst)
                .count();
            let routed = captured
                .plain
                .iter()
                .filter(|p| p.src == src && p.dst == dst)
                .count();
            if native_pairs.contains(&(from, to)) {
                assert!(
                    routed > 0 && tunnelled == 0,
                    "{from} -> {to}: {routed} routed, {tunnelled} tunnelled"
                );
            } else {
                assert!(
                    tunnelled > 0 && routed == 0,
                    "{from} -> {to}: {routed} routed, {tunnelled} tunnelled"
                );
            }
        }
    }
    for node in &fleet.nodes {
        // The mismatch is an error by design; nothing else may be.
        let log = node.log();
        let unexpected: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("ERROR") && !line.contains("routing mismatch"))
            .collect();
        assert!(unexpected.is_empty(), "{}: {unexpected:?}", node.id);
    }
}

#[test]
fn natively_routed_packets_must_come_the_way_they_would_be_answered() {
    let fleet = mixed_fleet();
    let c1 = fleet.node("c1/n1");
    let victim = &c1.pods[0];
    let c2_pod = fleet.node("c2/n1").pods[0].ip;
    let c3_pod = fleet.node("c3/n1").pods[0].ip;
    let receiver = probe::udp_socket(
        &victim.netns,
        SocketAddr::from((victim.ip, POD_PORT)),
        Duration::from_millis(800),
    )
    .unwrap();

    // A host on the underlay's segment holding pod addresses of c2 and c3,
    // sending to c1's pod through the router, or straight to c1's node.
    let intruder_ip = Ipv4Addr::new(198, 18, 0, 250);
    let intruder = fleet.add_underlay_host("intruder", intruder_ip).unwrap();
    for pod in [c2_pod, c3_pod] {
        intruder.ip(&format!("addr add {pod}/32 dev lo")).unwrap();
    }
    let via = |next_hop: Ipv4Addr| {
        intruder
            .ip(&format!("route replace {}/32 via {next_hop}", victim.ip))
            .unwrap();
    };
    let send = |from: Ipv4Addr, text: &str| {
        let socket = sender(&intruder, from);
        socket
            .send_to(text.as_bytes(), (victim.ip, POD_PORT))
            .unwrap();
    };
    let spoofed_before = drops(&fleet, DropReason::SpoofedSource);

    // Through the router, the way c1 answers c2's pods: delivered.
    via(ROUTER_IP);
    send(c2_pod, "through the router");
    assert_eq!(receive(&receiver).as_deref(), Some("through the router"));

    // Straight to c1's node, around the router: spoofed.
    via(c1.ip);
    send(c2_pod, "around the router");
    // c3 tunnels towards c1: its pods never arrive unencapsulated.
    via(ROUTER_IP);
    send(c3_pod, "tunnelled cluster, unencapsulated");
    assert_eq!(receive(&receiver), None, "a spoofed packet reached the pod");
    assert_eq!(drops(&fleet, DropReason::SpoofedSource) - spoofed_before, 2);
}

/// A UDP socket in `netns` sending from `ip`.
fn sender(netns: &Netns, ip: Ipv4Addr) -> UdpSocket {
    probe::udp_socket(netns, SocketAddr::from((ip, 0)), Duration::from_secs(1)).unwrap()
}

fn receive(socket: &UdpSocket) -> Option<String> {
    let mut buffer = [0u8; 256];
    socket
        .recv_from(&mut buffer)
        .ok()
        .map(|(n, _)| String::from_utf8_lossy(&buffer[..n]).into_owned())
}

/// Packets c1's node dropped at ingress for `reason`.
fn drops(fleet: &FleetInABox, reason: DropReason) -> u64 {
    fleet
        .node("c1/n1")
        .maps()
        .metrics()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.reason == reason as u8 && key.direction == Direction::Ingress as u8)
        .map(|(_, value)| value.packets)
        .sum()
}
