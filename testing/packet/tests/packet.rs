//! Packet tests through BPF_PROG_TEST_RUN: build the frame, seed the maps
//! through the agent's typed writers, run the program, then assert on the
//! action, the bytes it wrote (checksums recomputed) and the counters.

use std::net::Ipv4Addr;

use dataplane_common::{
    Direction, DropReason, MetricsKey, Verdict,
    maps::{PROG_FROM_OVERLAY, PROG_FROM_POD, PROG_TO_POD},
};
use fleetnet_agent::datapath::Datapath;
use fleetnet_testing::{
    packet::{
        self, ETH_HLEN, ETH_P_ARP, ETH_P_IPV6, Frame, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, L4,
        TCP_SYN,
    },
    scenario::*,
    testrun::{self, Outcome},
};

const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const PASS: i32 = -1;

/// Packets counted with `reason`, `direction` and clusters, any protocol.
fn count(datapath: &Datapath, reason: u8, direction: Direction, src: u16, dst: u16) -> u64 {
    packets_counted(datapath, |key: &MetricsKey| {
        (key.reason, key.direction, key.src_cluster, key.dst_cluster)
            == (reason, direction as u8, src, dst)
    })
}

/// Packets counted leaving local pods with `reason`, towards `dst_cluster`.
fn egress(datapath: &Datapath, reason: u8, dst_cluster: u16) -> u64 {
    count(
        datapath,
        reason,
        Direction::Egress,
        LOCAL_CLUSTER,
        dst_cluster,
    )
}

fn total_packets(datapath: &Datapath) -> u64 {
    packets_counted(datapath, |_| true)
}

fn every_protocol(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<Frame> {
    [
        L4::Tcp {
            sport: 40000,
            dport: 80,
            flags: TCP_SYN,
        },
        L4::Udp {
            sport: 40000,
            dport: 53,
        },
        L4::IcmpEcho { id: 9, seq: 1 },
    ]
    .into_iter()
    .map(|l4| Frame::new(src, dst, l4))
    .collect()
}

/// The output equals the input except for MACs, TTL and IPv4 checksum.
fn assert_only_routing_changed(input: &[u8], output: &Outcome) {
    assert_eq!(input.len(), output.packet.len());
    assert_eq!(
        input[12..ETH_HLEN + 8],
        output.packet[12..ETH_HLEN + 8],
        "ethertype and IPv4 header start"
    );
    assert_eq!(input[ETH_HLEN + 9], output.packet[ETH_HLEN + 9], "protocol");
    assert_eq!(
        input[ETH_HLEN + 12..],
        output.packet[ETH_HLEN + 12..],
        "addresses and payload"
    );
    assert!(
        packet::checksums_valid(&output.packet),
        "checksums after routing"
    );
}

#[test]
fn tcp_udp_icmp_to_a_local_pod_are_redirected_into_it() {
    let mut datapath = node();
    for frame in every_protocol(POD_A, POD_B) {
        let input = frame.build();
        let out = testrun::run(&mut datapath, PROG_FROM_POD, &input);
        assert_eq!(out.action, TC_ACT_REDIRECT, "{:?}", frame.l4);
        assert_only_routing_changed(&input, &out);
        let ip = packet::parse_ipv4(&out.packet).unwrap();
        assert_eq!(ip.dst_mac, POD_B_MAC, "destination MAC is the pod's own");
        assert_eq!(
            ip.src_mac, POD_B_GATEWAY_MAC,
            "source MAC is the pod's gateway"
        );
        assert_eq!(ip.ttl, frame.ttl - 1);
    }
    let delivered = Verdict::DeliveredLocal as u8;
    assert_eq!(egress(&datapath, delivered, LOCAL_CLUSTER), 3);
    assert_eq!(total_packets(&datapath), 3);
}

#[test]
fn tcp_udp_icmp_to_another_node_of_the_cluster_are_tunnelled() {
    let mut datapath = node();
    for frame in every_protocol(POD_A, POD_SAME_CLUSTER) {
        let input = frame.build();
        let out = testrun::run(&mut datapath, PROG_FROM_POD, &input);
        assert_eq!(out.action, TC_ACT_REDIRECT, "{:?}", frame.l4);
        assert_only_routing_changed(&input, &out);
        assert_eq!(out.packet[..12], input[..12], "inner MACs are left alone");
        assert_eq!(packet::parse_ipv4(&out.packet).unwrap().ttl, frame.ttl - 1);
    }
    let tunnelled = Verdict::Tunnelled as u8;
    assert_eq!(egress(&datapath, tunnelled, LOCAL_CLUSTER), 3);
}

#[test]
fn tcp_udp_icmp_to_another_cluster_are_tunnelled_and_counted_per_cluster() {
    let mut datapath = node();
    for frame in every_protocol(POD_A, POD_OTHER_CLUSTER) {
        let input = frame.build();
        let out = testrun::run(&mut datapath, PROG_FROM_POD, &input);
        assert_eq!(out.action, TC_ACT_REDIRECT, "{:?}", frame.l4);
        assert_only_routing_changed(&input, &out);
    }
    let tunnelled = Verdict::Tunnelled as u8;
    assert_eq!(egress(&datapath, tunnelled, OTHER_CLUSTER), 3);
    assert_eq!(egress(&datapath, tunnelled, LOCAL_CLUSTER), 0);
}

#[test]
fn unknown_destinations_go_to_the_stack_untouched() {
    let mut datapath = node();
    for frame in every_protocol(POD_A, OUTSIDE) {
        let input = frame.build();
        let out = testrun::run(&mut datapath, PROG_FROM_POD, &input);
        assert_eq!(out.action, PASS, "{:?}", frame.l4);
        assert_eq!(out.packet, input, "nothing rewritten");
    }
    let to_stack = Verdict::ToStack as u8;
    assert_eq!(egress(&datapath, to_stack, 0), 3);
}

/// The checksum is patched incrementally; every TTL and several lengths
/// exercise its end-around carries.
#[test]
fn routing_keeps_the_ipv4_checksum_valid_for_every_ttl() {
    let mut datapath = node();
    for payload_len in [0usize, 1, 7, 300] {
        for ttl in 2..=255u8 {
            for destination in [POD_B, POD_OTHER_CLUSTER] {
                let mut frame = Frame::new(POD_A, destination, L4::Udp { sport: 7, dport: 9 });
                frame.ttl = ttl;
                frame.payload = vec![0xa5; payload_len];
                let out = testrun::run(&mut datapath, PROG_FROM_POD, &frame.build());
                assert_eq!(out.action, TC_ACT_REDIRECT);
                assert!(
                    packet::checksums_valid(&out.packet),
                    "ttl {ttl}, payload {payload_len}"
                );
                assert_eq!(packet::parse_ipv4(&out.packet).unwrap().ttl, ttl - 1);
            }
        }
    }
}

#[test]
fn expiring_ttl_is_left_to_the_stack_for_its_icmp_error() {
    let mut datapath = node();
    let mut frame = Frame::new(POD_A, POD_OTHER_CLUSTER, L4::Udp { sport: 1, dport: 2 });
    frame.ttl = 1;
    let input = frame.build();
    let out = testrun::run(&mut datapath, PROG_FROM_POD, &input);
    assert_eq!(out.action, PASS);
    assert_eq!(out.packet, input);
}

#[test]
fn ipv4_options_are_routed_with_the_header_intact() {
    let mut datapath = node();
    for (destination, expected) in [
        (POD_B, TC_ACT_REDIRECT),
        (POD_OTHER_CLUSTER, TC_ACT_REDIRECT),
    ] {
        let mut frame = Frame::new(
            POD_A,
            destination,
            L4::Tcp {
                sport: 1,
                dport: 2,
                flags: TCP_SYN,
            },
        );
        frame.options = vec![1, 1, 1, 0]; // NOP, NOP, NOP, end of options
        let input = frame.build();
        let out = testrun::run(&mut datapath, PROG_FROM_POD, &input);
        assert_eq!(out.action, expected);
        let ip = packet::parse_ipv4(&out.packet).unwrap();
        assert_eq!(ip.header_len, 24);
        assert_eq!(ip.protocol, IPPROTO_TCP);
        assert!(packet::checksums_valid(&out.packet));
        assert_eq!(
            out.packet[ETH_HLEN + 20..],
            input[ETH_HLEN + 20..],
            "options and segment kept"
        );
    }
}

#[test]
fn pods_cannot_send_from_addresses_they_do_not_own() {
    let mut datapath = node();
    // An address no pod has, then pod B's address sent from pod A's interface.
    for source in [Ipv4Addr::new(10, 1, 1, 99), POD_B] {
        let out = testrun::run(
            &mut datapath,
            PROG_FROM_POD,
            &Frame::new(source, POD_OTHER_CLUSTER, L4::Udp { sport: 1, dport: 2 }).build(),
        );
        assert_eq!(out.action, TC_ACT_SHOT, "source {source}");
    }
    let invalid = DropReason::InvalidSource as u8;
    assert_eq!(egress(&datapath, invalid, 0), 2);
}

#[test]
fn malformed_frames_are_dropped_with_their_reason_by_every_program() {
    let valid = Frame::new(POD_A, POD_B, L4::Udp { sport: 1, dport: 2 }).build();
    let mut bad_ihl = valid.clone();
    bad_ihl[ETH_HLEN] = 0x44;
    let mut bad_version = valid.clone();
    bad_version[ETH_HLEN] = 0x65;
    let mut too_long = valid.clone();
    too_long[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&1400u16.to_be_bytes());
    let mut short_total = valid.clone();
    short_total[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&12u16.to_be_bytes());
    // Frames shorter than 20 bytes of IPv4 are refused by BPF_PROG_TEST_RUN
    // itself; tests/wire.rs sends those from a pod for real.
    let mut options_cut_off = valid[..ETH_HLEN + 20].to_vec();
    options_cut_off[ETH_HLEN] = 0x46;
    let mut max_ihl_cut_off = valid.clone();
    max_ihl_cut_off[ETH_HLEN] = 0x4f;
    let cases: [(&str, Vec<u8>, DropReason); 6] = [
        (
            "IHL 6 in a 20-byte header",
            options_cut_off,
            DropReason::Truncated,
        ),
        (
            "IHL 15 in a 36-byte packet",
            max_ihl_cut_off,
            DropReason::Truncated,
        ),
        ("IHL 4", bad_ihl, DropReason::BadIpHeader),
        (
            "version 6 in an IPv4 frame",
            bad_version,
            DropReason::BadIpHeader,
        ),
        (
            "total length beyond the frame",
            too_long,
            DropReason::BadIpHeader,
        ),
        (
            "total length below the header",
            short_total,
            DropReason::BadIpHeader,
        ),
    ];
    for (program, direction) in [
        (PROG_FROM_POD, Direction::Egress),
        (PROG_FROM_OVERLAY, Direction::Ingress),
        (PROG_TO_POD, Direction::Ingress),
    ] {
        let mut datapath = node();
        for (name, frame, reason) in &cases {
            let out = testrun::run(&mut datapath, program, frame);
            assert_eq!(out.action, TC_ACT_SHOT, "{program}: {name}");
            let counted: u64 = datapath
                .maps
                .metrics()
                .unwrap()
                .iter()
                .filter(|(key, _)| key.reason == *reason as u8 && key.direction == direction as u8)
                .map(|(_, value)| value.packets)
                .sum();
            assert!(counted >= 1, "{program}: {name} not counted as {reason:?}");
        }
        assert_eq!(
            total_packets(&datapath),
            cases.len() as u64,
            "{program}: every frame counted once"
        );
    }
}

#[test]
fn non_ipv4_frames_pass_to_the_stack_and_are_counted() {
    let mut datapath = node();
    for ethertype in [ETH_P_ARP, ETH_P_IPV6] {
        let mut frame = Frame::new(POD_A, POD_B, L4::Udp { sport: 1, dport: 2 }).build();
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        frame.resize(ETH_HLEN + 64, 0); // room for an IPv6 header
        let out = testrun::run(&mut datapath, PROG_FROM_POD, &frame);
        assert_eq!(out.action, PASS, "ethertype {ethertype:#x}");
        assert_eq!(out.packet, frame);
    }
    assert_eq!(egress(&datapath, Verdict::ToStack as u8, 0), 2);
}

#[test]
fn overlay_packets_without_tunnel_metadata_are_dropped() {
    // BPF_PROG_TEST_RUN carries no tunnel key; a real decapsulated packet
    // always has one. The tests in tests/wire.rs cover the real receive path.
    let mut datapath = node();
    let out = testrun::run(
        &mut datapath,
        PROG_FROM_OVERLAY,
        &Frame::new(POD_OTHER_CLUSTER, POD_A, L4::IcmpEcho { id: 1, seq: 1 }).build(),
    );
    assert_eq!(out.action, TC_ACT_SHOT);
    assert_eq!(
        count(
            &datapath,
            DropReason::NoTunnelKey as u8,
            Direction::Ingress,
            0,
            LOCAL_CLUSTER
        ),
        1
    );
}

#[test]
fn a_node_without_configuration_drops_and_says_so() {
    let mut datapath = testrun::load();
    let out = testrun::run(
        &mut datapath,
        PROG_FROM_POD,
        &Frame::new(POD_A, POD_B, L4::Udp { sport: 1, dport: 2 }).build(),
    );
    assert_eq!(out.action, TC_ACT_SHOT);
    assert_eq!(
        count(
            &datapath,
            DropReason::NotConfigured as u8,
            Direction::Egress,
            0,
            0
        ),
        1
    );
}

/// Random corruptions of valid frames: every run ends in a known action,
/// and every packet is counted exactly once under some verdict or reason.
#[test]
fn corrupted_frames_always_end_in_a_counted_verdict() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let templates: Vec<Vec<u8>> = [POD_B, POD_SAME_CLUSTER, POD_OTHER_CLUSTER, OUTSIDE]
        .into_iter()
        .flat_map(|dst| every_protocol(POD_A, dst))
        .map(|frame| frame.build())
        .collect();
    for program in [PROG_FROM_POD, PROG_FROM_OVERLAY, PROG_TO_POD] {
        let mut datapath = node();
        let mut runs = 0;
        for _ in 0..2000 {
            let mut frame = templates[(next() % templates.len() as u64) as usize].clone();
            for _ in 0..(next() % 4) {
                let at = (next() % frame.len() as u64) as usize;
                frame[at] ^= 1 << (next() % 8);
            }
            let keep = ETH_HLEN + (next() % (frame.len() - ETH_HLEN + 1) as u64) as usize;
            frame.truncate(keep);
            // Frames the kernel refuses to test-run never reach the program.
            let Ok(out) = testrun::try_run(&mut datapath, program, &frame) else {
                continue;
            };
            runs += 1;
            assert!(
                [PASS, TC_ACT_SHOT, TC_ACT_REDIRECT].contains(&out.action),
                "{program}: action {}",
                out.action
            );
        }
        assert!(
            runs > 1000,
            "{program}: only {runs} of 2000 frames were accepted by the kernel"
        );
        assert_eq!(
            total_packets(&datapath),
            runs,
            "{program}: each frame counted exactly once"
        );
    }
}

#[test]
fn protocol_numbers_match_the_wire() {
    // Guards the builders the other tests rely on.
    let parsed = |l4| {
        packet::parse_ipv4(&Frame::new(POD_A, POD_B, l4).build())
            .unwrap()
            .protocol
    };
    assert_eq!(parsed(L4::IcmpEcho { id: 1, seq: 1 }), IPPROTO_ICMP);
    assert_eq!(parsed(L4::Udp { sport: 1, dport: 1 }), IPPROTO_UDP);
}
