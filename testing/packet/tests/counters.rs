//! The datapath's counters and flow events through BPF_PROG_TEST_RUN:
//! packets counted by protocol, forwarded packets sampled as events at the
//! configured rate, and a full ring losing events (counted) but never
//! counts.

use dataplane_common::{Direction, Verdict, maps::PROG_FROM_POD};
use fleetnet_agent::datapath::Datapath;
use fleetnet_testing::{
    packet::{Frame, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, L4, TCP_SYN},
    scenario::*,
    testrun,
};

fn sample(datapath: &mut Datapath, one_in: u16) {
    let mut config = datapath.maps.node_config().unwrap();
    config.forward_sample = one_in;
    datapath.maps.set_node_config(config).unwrap();
}

fn udp(sport: u16) -> Vec<u8> {
    Frame::new(POD_A, POD_B, L4::Udp { sport, dport: 53 }).build()
}

#[test]
fn packets_are_counted_by_protocol() {
    let mut datapath = node();
    let frames = [
        (IPPROTO_UDP, udp(1)),
        (IPPROTO_UDP, udp(2)),
        (IPPROTO_UDP, udp(3)),
        (
            IPPROTO_TCP,
            Frame::tcp(POD_A, 1, POD_B, 80, TCP_SYN).build(),
        ),
        (
            IPPROTO_TCP,
            Frame::tcp(POD_A, 2, POD_B, 80, TCP_SYN).build(),
        ),
        (
            IPPROTO_ICMP,
            Frame::new(POD_A, POD_B, L4::IcmpEcho { id: 7, seq: 1 }).build(),
        ),
    ];
    for (_, frame) in &frames {
        testrun::run(&mut datapath, PROG_FROM_POD, frame);
    }
    let metrics = datapath.maps.metrics().unwrap();
    for (protocol, expected) in [(IPPROTO_UDP, 3), (IPPROTO_TCP, 2), (IPPROTO_ICMP, 1)] {
        let counted: u64 = metrics
            .iter()
            .filter(|(key, _)| {
                key.protocol == protocol
                    && key.reason == Verdict::DeliveredLocal as u8
                    && key.direction == Direction::Egress as u8
            })
            .map(|(_, value)| value.packets)
            .sum();
        assert_eq!(counted, expected, "protocol {protocol}");
    }
}

#[test]
fn forwarded_packets_become_events_at_the_sampling_rate() {
    let mut datapath = node();
    for sport in 0..100 {
        testrun::run(&mut datapath, PROG_FROM_POD, &udp(sport));
    }
    assert!(datapath.maps.drain_events().is_empty(), "0 samples nothing");

    sample(&mut datapath, 1);
    testrun::run(&mut datapath, PROG_FROM_POD, &udp(4242));
    let events = datapath.maps.drain_events();
    assert_eq!(events.len(), 1);
    let event = events[0];
    assert_eq!(
        (event.reason, event.direction, event.protocol),
        (
            Verdict::DeliveredLocal as u8,
            Direction::Egress as u8,
            IPPROTO_UDP
        )
    );
    assert_eq!((event.src, event.dst), (POD_A.octets(), POD_B.octets()));
    assert_eq!(event.src_port, 4242u16.to_be());
    assert_eq!(
        (event.src_identity, event.dst_identity),
        (
            dataplane_common::identity::make(LOCAL_CLUSTER, 0x101),
            dataplane_common::identity::make(LOCAL_CLUSTER, 0x102)
        )
    );

    // One in four, at random: 4,000 packets give about 1,000 events
    // (the standard deviation is 27).
    sample(&mut datapath, 4);
    for sport in 0..4000 {
        testrun::run(&mut datapath, PROG_FROM_POD, &udp(sport));
    }
    let sampled = datapath.maps.drain_events().len();
    assert!((800..1200).contains(&sampled), "{sampled} events");
}

#[test]
fn a_full_ring_loses_events_but_counts_every_packet() {
    let mut datapath = node();
    sample(&mut datapath, 1);
    let sent = 8000u64;
    for sport in 0..sent {
        testrun::run(&mut datapath, PROG_FROM_POD, &udp(sport as u16));
    }
    let delivered = datapath.maps.drain_events().len() as u64;
    let lost = datapath.maps.counters().events_lost().unwrap();
    assert!(lost > 0, "256 KiB hold fewer than {sent} events");
    assert_eq!(delivered + lost, sent);
    let counted: u64 = datapath
        .maps
        .metrics()
        .unwrap()
        .values()
        .map(|value| value.packets)
        .sum();
    assert_eq!(counted, sent);
}
