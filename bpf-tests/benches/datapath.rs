//! Per-packet cost of the datapath programs through BPF_PROG_TEST_RUN,
//! side by side with an empty classifier (the floor) in the same run.
//! Absolute numbers move with the machine; the ratios are the figures.

use bpf_tests::{
    packet::{Frame, L4, TCP_SYN},
    scenario::{self, OUTSIDE, POD_A, POD_B, POD_OTHER_CLUSTER, POD_SAME_CLUSTER},
    testrun,
};
use dataplane_common::maps::{PROG_FLOOR, PROG_FROM_POD};

/// 250 repeats per call on a TTL-255 packet keep every repeat on the same
/// path; 4,000 calls make 1M packets per case.
const REPEAT: u32 = 250;
const CALLS: usize = 4_000;

fn main() {
    let mut datapath = scenario::node();
    let tcp = |dst| {
        let mut frame = Frame::new(
            POD_A,
            dst,
            L4::Tcp {
                sport: 40000,
                dport: 80,
                flags: TCP_SYN,
            },
        );
        frame.ttl = 255;
        frame.build()
    };
    let cases = [
        ("empty classifier (floor)", PROG_FLOOR, tcp(POD_B)),
        (
            "from-pod: local pod (redirect_peer)",
            PROG_FROM_POD,
            tcp(POD_B),
        ),
        (
            "from-pod: other node, same cluster (VXLAN)",
            PROG_FROM_POD,
            tcp(POD_SAME_CLUSTER),
        ),
        (
            "from-pod: other cluster (VXLAN)",
            PROG_FROM_POD,
            tcp(POD_OTHER_CLUSTER),
        ),
        (
            "from-pod: outside the mesh (to stack)",
            PROG_FROM_POD,
            tcp(OUTSIDE),
        ),
    ];
    println!(
        "BPF_PROG_TEST_RUN, {} packets per case, median of {CALLS} calls x {REPEAT} repeats",
        CALLS as u32 * REPEAT
    );
    println!("{:<46} {:>10} {:>12}", "case", "ns/packet", "vs floor");
    let mut floor = None;
    for (name, program, packet) in cases {
        let ns = testrun::ns_per_packet(&mut datapath, program, &packet, REPEAT, CALLS);
        let floor = *floor.get_or_insert(ns);
        println!("{name:<46} {ns:>10.1} {:>11.2}x", ns / floor);
    }
}
