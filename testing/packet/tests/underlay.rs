//! from_underlay through BPF_PROG_TEST_RUN: the uplink's own traffic is
//! none of its business and goes on untouched and uncounted, whatever its
//! shape; a packet to a pod of this node from a mesh pod is delivered only
//! from a natively routed cluster, by the way this node would answer it.
//! The delivery itself needs the kernel's FIB and neighbours: the routing
//! e2e tests (testing/e2e/tests/routing_e2e.rs) cover it.

use dataplane_common::{
    Direction, DropReason, IpcacheEntry, identity,
    maps::{PROG_FROM_POD, PROG_FROM_UNDERLAY},
};
use fleetnet_agent::datapath::Datapath;
use fleetnet_testing::{
    packet::{ETH_HLEN, Frame, L4},
    scenario::*,
    testrun,
};

const TC_ACT_SHOT: i32 = 2;
const PASS: i32 = -1;

fn udp(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr) -> Vec<u8> {
    Frame::new(
        src,
        dst,
        L4::Udp {
            sport: 5555,
            dport: 9000,
        },
    )
    .build()
}

fn counted(datapath: &Datapath) -> u64 {
    packets_counted(datapath, |_| true)
}

fn spoofed(datapath: &Datapath) -> u64 {
    packets_counted(datapath, |key| {
        key.reason == DropReason::SpoofedSource as u8 && key.direction == Direction::Ingress as u8
    })
}

/// Marks cluster 2's node CIDR as routed natively.
fn native_other_cluster(datapath: &mut Datapath) {
    let entry = IpcacheEntry {
        identity: identity::UNMANAGED,
        tunnel_endpoint: OTHER_CLUSTER_NODE,
        cluster_id: OTHER_CLUSTER,
        flags: IpcacheEntry::NATIVE,
    };
    datapath
        .maps
        .upsert_ipcache("10.2.1.0/24".parse().unwrap(), entry)
        .unwrap();
}

#[test]
fn the_uplinks_own_traffic_goes_on_untouched_and_uncounted() {
    let mut datapath = node();
    let node_ip = std::net::Ipv4Addr::from(NODE_IP);
    let mut malformed = udp(POD_OTHER_CLUSTER, POD_A);
    malformed[ETH_HLEN] = 0x44; // IHL 4
    let mut arp = udp(OUTSIDE, node_ip);
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    for (what, frame) in [
        ("to the node", udp(OUTSIDE, node_ip)),
        ("VXLAN to the node", udp(OTHER_CLUSTER_NODE.into(), node_ip)),
        (
            "to an address of no pod here",
            udp(OUTSIDE, POD_SAME_CLUSTER),
        ),
        ("to a pod, from outside the mesh", udp(OUTSIDE, POD_A)),
        ("malformed", malformed),
        ("ARP", arp),
    ] {
        let out = testrun::run(&mut datapath, PROG_FROM_UNDERLAY, &frame);
        assert_eq!((out.action, &out.packet), (PASS, &frame), "{what}");
    }
    assert_eq!(counted(&datapath), 0);
}

#[test]
fn mesh_pods_arrive_unencapsulated_only_from_natively_routed_clusters() {
    let mut datapath = node();
    // Cluster 2 is tunnelled: a bare packet from its pod is spoofed.
    let out = testrun::run(
        &mut datapath,
        PROG_FROM_UNDERLAY,
        &udp(POD_OTHER_CLUSTER, POD_A),
    );
    assert_eq!(out.action, TC_ACT_SHOT);
    assert_eq!(spoofed(&datapath), 1);

    // Routed natively, but this node has no way back to the source (the
    // test runs where no route leads to 10.2.1.0/24): not where it would
    // be answered, spoofed too.
    native_other_cluster(&mut datapath);
    let out = testrun::run(
        &mut datapath,
        PROG_FROM_UNDERLAY,
        &udp(POD_OTHER_CLUSTER, POD_A),
    );
    assert_eq!(out.action, TC_ACT_SHOT);
    assert_eq!(spoofed(&datapath), 2);
}

#[test]
fn pods_going_natively_are_held_to_the_underlays_mtu() {
    let mut datapath = node();
    native_other_cluster(&mut datapath);
    let mtu = usize::from(PATH_MTU + 50);
    // Tunnelled, 1451 bytes would not fit; natively, up to 1500 do, and
    // 1501 are answered as too big.
    let sized = |total_len: usize| {
        let mut frame = Frame::new(
            POD_A,
            POD_OTHER_CLUSTER,
            L4::Udp {
                sport: 5555,
                dport: 9000,
            },
        );
        frame.payload = vec![0; total_len - 28];
        frame.build()
    };
    let frag_needed = |datapath: &Datapath| {
        datapath
            .maps
            .metrics()
            .unwrap()
            .iter()
            .filter(|(key, _)| key.reason == DropReason::FragNeeded as u8)
            .map(|(_, value)| value.packets)
            .sum::<u64>()
    };
    testrun::run(&mut datapath, PROG_FROM_POD, &sized(mtu));
    assert_eq!(frag_needed(&datapath), 0, "{mtu} bytes fit natively");
    testrun::run(&mut datapath, PROG_FROM_POD, &sized(mtu + 1));
    assert_eq!(frag_needed(&datapath), 1, "{} bytes do not", mtu + 1);
}
