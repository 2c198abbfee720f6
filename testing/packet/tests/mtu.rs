//! The path MTU through BPF_PROG_TEST_RUN: TCP SYNs leaving for another
//! node have their MSS clamped to the path; a packet over the path MTU is
//! answered with ICMP "fragmentation needed" straight back into the pod,
//! and counted as a `frag_needed` drop; packets that fit, and packets to
//! pods of this node, go on untouched.

use dataplane_common::{Direction, DropReason, MetricsKey, Verdict, maps::PROG_FROM_POD};
use fleetnet_agent::datapath::Datapath;
use fleetnet_testing::{
    packet::{self, ETH_HLEN, Frame, IPPROTO_ICMP, L4, TCP_ACK, TCP_SYN},
    scenario::*,
    testrun,
};

const TC_ACT_REDIRECT: i32 = 7;
/// Pod A's MAC and the MAC of its veth's node end (scenario).
const POD_A_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x0a];
const POD_A_GATEWAY_MAC: [u8; 6] = [0x02, 0xfe, 0, 0, 0, 0x0a];

/// A TCP segment from pod A with an MSS option of `mss` (then NOP, NOP and
/// SACK-permitted, as Linux sends them).
fn syn_with_mss(dst: std::net::Ipv4Addr, flags: u8, mss: u16) -> Frame {
    let mut frame = Frame::tcp(POD_A, 40000, dst, 80, flags);
    let [hi, lo] = mss.to_be_bytes();
    frame.tcp_options = vec![2, 4, hi, lo, 1, 1, 4, 2];
    frame
}

/// The MSS option of a TCP frame built by [`syn_with_mss`].
fn mss_of(frame: &[u8]) -> u16 {
    let ip = packet::parse_ipv4(frame).expect("an IPv4 frame");
    let option = ETH_HLEN + ip.header_len + 20;
    assert_eq!(frame[option..option + 2], [2, 4], "the MSS option moved");
    u16::from_be_bytes([frame[option + 2], frame[option + 3]])
}

/// A UDP datagram from pod A whose IPv4 packet is `total_len` bytes (DF set).
fn datagram(dst: std::net::Ipv4Addr, total_len: usize) -> Frame {
    let mut frame = Frame::new(
        POD_A,
        dst,
        L4::Udp {
            sport: 40000,
            dport: 9000,
        },
    );
    frame.payload = vec![0x5a; total_len - 28];
    frame
}

fn count(datapath: &Datapath, reason: u8, dst_cluster: u16) -> u64 {
    packets_counted(datapath, |key: &MetricsKey| {
        (key.reason, key.direction, key.src_cluster, key.dst_cluster)
            == (reason, Direction::Egress as u8, LOCAL_CLUSTER, dst_cluster)
    })
}

#[test]
fn syns_leaving_for_another_node_have_their_mss_clamped_to_the_path() {
    fleetnet_testing::require_root();
    let mut datapath = node();
    let clamped = PATH_MTU - 40;
    for (dst, flags, mss, expected) in [
        (POD_OTHER_CLUSTER, TCP_SYN, 1460, clamped),
        (POD_OTHER_CLUSTER, TCP_SYN | TCP_ACK, 8960, clamped),
        (POD_SAME_CLUSTER, TCP_SYN, 1460, clamped),
        // Small enough already.
        (POD_OTHER_CLUSTER, TCP_SYN, 1200, 1200),
        // To a pod of this node: no tunnel, nothing to fit.
        (POD_B, TCP_SYN, 1460, 1460),
    ] {
        let frame = syn_with_mss(dst, flags, mss).build();
        let out = testrun::run(&mut datapath, PROG_FROM_POD, &frame);
        assert_eq!(out.action, TC_ACT_REDIRECT, "to {dst}");
        assert_eq!(mss_of(&out.packet), expected, "SYN with MSS {mss} to {dst}");
        assert!(
            packet::checksums_valid(&out.packet),
            "SYN with MSS {mss} to {dst}: checksums"
        );
    }
    // A segment that is not a SYN keeps its options whatever they say.
    let frame = syn_with_mss(POD_OTHER_CLUSTER, TCP_ACK, 1460).build();
    let out = testrun::run(&mut datapath, PROG_FROM_POD, &frame);
    assert_eq!(mss_of(&out.packet), 1460);
}

#[test]
fn a_packet_over_the_path_mtu_is_answered_with_icmp_fragmentation_needed() {
    fleetnet_testing::require_root();
    let mut datapath = node();
    let frame = datagram(POD_OTHER_CLUSTER, usize::from(PATH_MTU) + 1).build();
    let out = testrun::run(&mut datapath, PROG_FROM_POD, &frame);

    // Redirected back into pod A, from the node.
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let reply = packet::parse_ipv4(&out.packet).expect("an IPv4 answer");
    assert_eq!(
        (reply.dst_mac, reply.src_mac),
        (POD_A_MAC, POD_A_GATEWAY_MAC)
    );
    assert_eq!(
        (reply.src, reply.dst, reply.protocol),
        (NODE_IP.into(), POD_A, IPPROTO_ICMP)
    );
    assert_eq!(reply.total_len, out.packet.len() - ETH_HLEN);
    assert!(packet::checksums_valid(&out.packet), "{:02x?}", out.packet);
    // Destination unreachable, fragmentation needed, and the path's MTU.
    let icmp = &out.packet[ETH_HLEN + 20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), PATH_MTU);
    // It quotes the packet's IPv4 header and the start of its payload, so
    // the sender finds the socket.
    let quote = &icmp[8..];
    assert!(quote.len() >= 28, "{} bytes quoted", quote.len());
    assert_eq!(quote, &frame[ETH_HLEN..ETH_HLEN + quote.len()]);
    assert_eq!(
        count(&datapath, DropReason::FragNeeded as u8, OTHER_CLUSTER),
        1
    );
    assert_eq!(count(&datapath, Verdict::Tunnelled as u8, OTHER_CLUSTER), 0);
}

#[test]
fn packets_that_fit_and_packets_to_pods_of_this_node_go_on() {
    fleetnet_testing::require_root();
    let mut datapath = node();
    // Exactly the path MTU: tunnelled, unchanged but for TTL and checksum.
    let fits = datagram(POD_OTHER_CLUSTER, usize::from(PATH_MTU)).build();
    let out = testrun::run(&mut datapath, PROG_FROM_POD, &fits);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(out.packet.len(), fits.len());
    assert_eq!(count(&datapath, Verdict::Tunnelled as u8, OTHER_CLUSTER), 1);
    // A pod of this node takes what its interface takes.
    let local = datagram(POD_B, 1500).build();
    let out = testrun::run(&mut datapath, PROG_FROM_POD, &local);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(out.packet.len(), local.len());
    assert_eq!(
        count(&datapath, Verdict::DeliveredLocal as u8, LOCAL_CLUSTER),
        1
    );
    assert_eq!(
        count(&datapath, DropReason::FragNeeded as u8, OTHER_CLUSTER)
            + count(&datapath, DropReason::FragNeeded as u8, LOCAL_CLUSTER),
        0
    );
}
