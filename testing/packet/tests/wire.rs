//! Packet tests on the wire: the programs attached by a real agent, fed by
//! real sockets. These cover what BPF_PROG_TEST_RUN cannot: the tunnel key
//! the kernel encapsulates with, the tunnel metadata on receipt (VNI and
//! outer source, checked against the ipcache), and frames too short for
//! the test-run syscall to accept.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use dataplane_common::{Direction, DropReason, MetricsKey};
use fleetnet_testing::{
    capture::Capture,
    fleet_in_a_box::{FleetInABox, FleetSpec, VXLAN_PORT},
    iperf,
    netns::Netns,
    packet::{self, ETH_HLEN, Frame, L4},
    probe,
};

const POD_PORT: u16 = 9000;

fn two_clusters() -> FleetInABox {
    let fleet = FleetInABox::build(FleetSpec::new(2, 1, 1)).expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    fleet
}

fn drops(fleet: &FleetInABox, node: &str, reason: DropReason, direction: Direction) -> u64 {
    fleet
        .node(node)
        .maps()
        .metrics()
        .unwrap()
        .iter()
        .filter(|(key, _): &(&MetricsKey, _)| {
            key.reason == reason as u8 && key.direction == direction as u8
        })
        .map(|(_, value)| value.packets)
        .sum()
}

#[test]
fn the_tunnel_key_names_the_owning_node_and_the_source_cluster() {
    let fleet = two_clusters();
    let (c1, c2) = (fleet.node("c1/n1"), fleet.node("c2/n1"));
    let (a, b) = (&c1.pods[0], &c2.pods[0]);
    let receiver_b = socket(&b.netns, b.ip, POD_PORT, Duration::from_secs(3));
    let receiver_a = socket(&a.netns, a.ip, POD_PORT, Duration::from_secs(3));
    let sender_a = socket(&a.netns, a.ip, 0, Duration::from_secs(3));
    let sender_b = socket(&b.netns, b.ip, 0, Duration::from_secs(3));

    let capture = Capture::start(&fleet.underlay, VXLAN_PORT).unwrap();
    sender_a.send_to(b"from a", (b.ip, POD_PORT)).unwrap();
    assert_eq!(receive(&receiver_b), b"from a");
    sender_b.send_to(b"from b", (a.ip, POD_PORT)).unwrap();
    assert_eq!(receive(&receiver_a), b"from b");
    let packets = capture.finish().tunnelled;

    let a_to_b = packets
        .iter()
        .find(|p| p.inner.src == a.ip && p.inner.dst == b.ip)
        .expect("a -> b crossed VXLAN");
    assert_eq!(
        (a_to_b.outer_src, a_to_b.outer_dst, a_to_b.vni),
        (c1.ip, c2.ip, 1)
    );
    let b_to_a = packets
        .iter()
        .find(|p| p.inner.src == b.ip && p.inner.dst == a.ip)
        .expect("b -> a crossed VXLAN");
    assert_eq!(
        (b_to_a.outer_src, b_to_a.outer_dst, b_to_a.vni),
        (c2.ip, c1.ip, 2)
    );
}

/// Crafted VXLAN sent to node c1/n1, whose pod listens on UDP 9000. Only
/// the genuine packet (right VNI, right outer source) may reach the pod.
#[test]
fn tunnelled_packets_whose_source_does_not_belong_to_the_sender_are_dropped() {
    let fleet = two_clusters();
    let (c1, c2) = (fleet.node("c1/n1"), fleet.node("c2/n1"));
    let (victim, peer_pod) = (&c1.pods[0], &c2.pods[0]);
    let receiver = socket(
        &victim.netns,
        victim.ip,
        POD_PORT,
        Duration::from_millis(600),
    );
    let from_peer_node = socket(&c2.netns, c2.ip, 0, Duration::from_secs(1));
    let intruder_ip = Ipv4Addr::new(198, 18, 0, 250);
    let intruder_ns = fleet.add_underlay_host("intruder", intruder_ip).unwrap();
    let from_intruder = socket(&intruder_ns, intruder_ip, 0, Duration::from_secs(1));
    let target = SocketAddr::from((c1.ip, VXLAN_PORT));
    let vxlan = |vni, inner_src, text: &str| crafted_vxlan(vni, inner_src, victim.ip, text);

    // Positive control: the peer node, its own cluster's VNI, its own pod.
    from_peer_node
        .send_to(&vxlan(2, peer_pod.ip, "genuine"), target)
        .unwrap();
    assert_eq!(receive(&receiver), b"genuine");

    // The peer node claims to be cluster 1 (VNI) for its cluster-2 pod.
    from_peer_node
        .send_to(&vxlan(1, peer_pod.ip, "wrong vni"), target)
        .unwrap();
    // The peer node sends with a source address of cluster 1.
    from_peer_node
        .send_to(&vxlan(2, victim.ip, "wrong cluster source"), target)
        .unwrap();
    // An underlay host that is no node sends for cluster 2's pod.
    from_intruder
        .send_to(&vxlan(2, peer_pod.ip, "wrong node"), target)
        .unwrap();
    // A source no cluster owns.
    from_peer_node
        .send_to(
            &vxlan(2, Ipv4Addr::new(10, 99, 0, 1), "unknown source"),
            target,
        )
        .unwrap();

    let mut buffer = [0u8; 256];
    let leaked = receiver
        .recv_from(&mut buffer)
        .ok()
        .map(|(n, _)| String::from_utf8_lossy(&buffer[..n]).into_owned());
    assert_eq!(leaked, None, "a spoofed packet reached the pod");
    assert_eq!(
        drops(
            &fleet,
            "c1/n1",
            DropReason::SpoofedSource,
            Direction::Ingress
        ),
        3
    );
    assert_eq!(
        drops(
            &fleet,
            "c1/n1",
            DropReason::UnknownTunnelSource,
            Direction::Ingress
        ),
        1
    );
}

/// VXLAN carries no identity: the receiver resolves the inner source in
/// its ipcache and checks that against the destination's ingress policy.
/// Two genuine packets from the same node and cluster, from two pods with
/// different labels: only the allowed one's reaches the pod.
#[test]
fn ingress_policy_uses_the_identity_the_receiver_resolves() {
    let mut fleet = FleetInABox::build(FleetSpec::new(2, 1, 2)).expect("building the fleet");
    fleet
        .set_pod_labels("c2/n1/p1", &[("app", "frontend")])
        .unwrap();
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    fleet
        .write_policy(
            1,
            "p1",
            "{ podSelector: { matchLabels: { app: p1 } }, ingress: [ { from: [ \
             { podSelector: { matchLabels: { app: frontend, fleetnet.io/cluster: c2 } } } ] } ] }",
        )
        .unwrap();
    let (c1, c2) = (fleet.node("c1/n1"), fleet.node("c2/n1"));
    let (victim, allowed, other) = (&c1.pods[0], &c2.pods[0], &c2.pods[1]);
    let enforced = wait_for(|| {
        let maps = c1.maps();
        maps.endpoints().unwrap()[&victim.ip.octets()].flags != 0
            && !maps.policy().unwrap().is_empty()
    });
    assert!(enforced, "c1/n1 never enforced the policy");

    let receiver = socket(
        &victim.netns,
        victim.ip,
        POD_PORT,
        Duration::from_millis(600),
    );
    let from_peer_node = socket(&c2.netns, c2.ip, 0, Duration::from_secs(1));
    let target = SocketAddr::from((c1.ip, VXLAN_PORT));
    let vxlan = |inner_src, text: &str| crafted_vxlan(2, inner_src, victim.ip, text);
    from_peer_node
        .send_to(&vxlan(other.ip, "other"), target)
        .unwrap();
    from_peer_node
        .send_to(&vxlan(allowed.ip, "frontend"), target)
        .unwrap();
    assert_eq!(
        receive(&receiver),
        b"frontend",
        "only the frontend's packet arrives"
    );
    let mut buffer = [0u8; 64];
    assert!(
        receiver.recv_from(&mut buffer).is_err(),
        "nothing else arrives"
    );
    assert_eq!(
        drops(
            &fleet,
            "c1/n1",
            DropReason::PolicyDeniedIngress,
            Direction::Ingress
        ),
        1
    );
}

/// A pod can write any bytes to its interface; frames too short for their
/// headers are dropped and counted, not forwarded.
#[test]
fn truncated_frames_from_a_pod_are_dropped_and_counted() {
    let fleet = two_clusters();
    let node = fleet.node("c1/n1");
    let pod = &node.pods[0];
    let destination = fleet.node("c2/n1").pods[0].ip;
    let mut valid = Frame::new(pod.ip, destination, L4::Udp { sport: 1, dport: 2 });
    valid.src_mac = pod.mac;
    valid.dst_mac = pod.gateway_mac;
    let valid = valid.build();
    let mut header_longer_than_frame = valid[..ETH_HLEN + 20].to_vec();
    header_longer_than_frame[ETH_HLEN] = 0x4f;
    let frames = [
        valid[..ETH_HLEN].to_vec(),
        valid[..ETH_HLEN + 10].to_vec(),
        valid[..ETH_HLEN + 19].to_vec(),
        header_longer_than_frame,
    ];
    for frame in &frames {
        probe::send_raw_frame(&pod.netns, "eth0", frame).unwrap();
    }
    let counted = wait_for(|| {
        drops(&fleet, "c1/n1", DropReason::Truncated, Direction::Egress) == frames.len() as u64
    });
    assert!(
        counted,
        "got {} truncated drops",
        drops(&fleet, "c1/n1", DropReason::Truncated, Direction::Egress)
    );
}

/// A UDP socket inside `netns` bound to `ip`:`port`, reads timing out after
/// `timeout`.
fn socket(netns: &Netns, ip: Ipv4Addr, port: u16, timeout: Duration) -> UdpSocket {
    probe::udp_socket(netns, SocketAddr::from((ip, port)), timeout).expect("binding a UDP socket")
}

/// A VXLAN payload (what goes to UDP port 4789) with VNI `vni` around a
/// UDP datagram `text` from `inner_src` to `destination`'s POD_PORT.
fn crafted_vxlan(vni: u32, inner_src: Ipv4Addr, destination: Ipv4Addr, text: &str) -> Vec<u8> {
    let mut inner = Frame::new(
        inner_src,
        destination,
        L4::Udp {
            sport: 5555,
            dport: POD_PORT,
        },
    );
    inner.payload = text.as_bytes().to_vec();
    let mut bytes = packet::vxlan_header(vni).to_vec();
    bytes.extend_from_slice(&inner.build());
    bytes
}

fn receive(socket: &UdpSocket) -> Vec<u8> {
    let mut buffer = [0u8; 256];
    let (n, _) = socket.recv_from(&mut buffer).expect("datagram delivered");
    buffer[..n].to_vec()
}

fn wait_for(condition: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Pods at MTU 1500 on a 1500-byte underlay: the path to the other
/// cluster carries 1450, TCP runs through it at full size with no IP
/// fragment anywhere (the MSS is clamped), and a DF ping over it is
/// answered with "fragmentation needed, mtu 1450".
#[test]
fn pods_over_the_path_mtu_get_clamped_segments_and_icmp_never_fragments() {
    let fleet = FleetInABox::build(FleetSpec {
        pod_mtu: 1500,
        ..FleetSpec::new(2, 1, 1)
    })
    .expect("building the fleet");
    fleet.start_agents().expect("starting agents");
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    let (c1, c2) = (fleet.node("c1/n1"), fleet.node("c2/n1"));
    let (a, b) = (&c1.pods[0], &c2.pods[0]);
    fleetnet_testing::wait_for(
        "the agents know the path MTU",
        Duration::from_secs(10),
        || {
            [c1, c2].iter().all(|node| {
                node.metric("fleetnet_path_mtu_bytes").ok().flatten() == Some(1450.0)
                    && node
                        .metric("fleetnet_endpoints_over_path_mtu")
                        .ok()
                        .flatten()
                        == Some(1.0)
            })
        },
    );
    for node in [c1, c2] {
        let warnings = node.log().matches("larger MTU than the path").count();
        assert_eq!(warnings, 1, "{}: one warning: {}", node.id, node.log());
    }

    // A full-size DF packet: answered, not carried, not fragmented.
    let ping = a
        .netns
        .command("ping")
        .unwrap()
        .args(["-M", "do", "-s", "1472", "-c", "2", "-W", "2"])
        .arg(b.ip.to_string())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&ping.stdout).to_string() + &String::from_utf8_lossy(&ping.stderr);
    assert!(
        said.contains("mtu = 1450") || said.contains("mtu=1450"),
        "ping -M do -s 1472 was not told the path MTU: {said}"
    );
    let answered = drops(&fleet, "c1/n1", DropReason::FragNeeded, Direction::Egress);
    assert!(answered >= 1, "the ping was not counted as too big");

    // Bulk TCP: full-size segments, no fragments on the way.
    let fragments = |node: &fleetnet_testing::fleet_in_a_box::Node| {
        let counters = node.netns.ip_counters().unwrap();
        (counters["FragCreates"], counters["ReasmReqds"])
    };
    let before: Vec<_> = [c1, c2].iter().map(|node| fragments(node)).collect();
    let _server = iperf::Server::start(b, POD_PORT).expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let run = iperf::run(a, std::net::SocketAddrV4::new(b.ip, POD_PORT), 1, 2).expect("iperf3");
    eprintln!(
        "pods at MTU 1500 across clusters: {:.2} Gbit/s, {} retransmits",
        run.gbits, run.retransmits
    );
    assert!(run.gbits > 0.0, "nothing got through");
    let after: Vec<_> = [c1, c2].iter().map(|node| fragments(node)).collect();
    assert_eq!(
        before, after,
        "IP fragments were made or reassembled on the nodes"
    );
    assert_eq!(
        drops(&fleet, "c1/n1", DropReason::FragNeeded, Direction::Egress),
        answered,
        "TCP's segments fit: none was too big"
    );
}
