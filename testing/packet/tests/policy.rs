//! Policy enforcement through BPF_PROG_TEST_RUN on the node of
//! `scenario`: egress at the sender, ingress at a local receiver, replies
//! of allowed connections, what the stack delivers (to_pod), identities
//! of unknown clusters, and the event every denial emits.

use std::net::Ipv4Addr;

use dataplane_common::{
    Direction, DropReason, EndpointInfo, FlowEvent, IpcacheEntry, MetricsKey, PolicyKey, identity,
    maps::{PROG_FROM_POD, PROG_TO_POD},
};
use fleetnet_agent::datapath::Datapath;
use fleetnet_testing::{
    packet::{Frame, IPPROTO_TCP, IPPROTO_UDP, L4, TCP_ACK, TCP_SYN},
    scenario::*,
    testrun,
};

const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const PASS: i32 = -1;

/// Policy groups and identities of the scenario's pods (one group each).
const A: (u16, u32) = (1, identity::make(LOCAL_CLUSTER, 0x101));
const C: (u16, u32) = (3, identity::make(LOCAL_CLUSTER, 0x103));
/// A pod of cluster 2, with an identity of its own.
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 20);
const REMOTE_IDENTITY: u32 = identity::make(OTHER_CLUSTER, 0x120);

fn policy_node() -> Datapath {
    let mut datapath = node();
    datapath
        .maps
        .upsert_ipcache(
            format!("{REMOTE_POD}/32").parse().unwrap(),
            IpcacheEntry {
                identity: REMOTE_IDENTITY,
                tunnel_endpoint: OTHER_CLUSTER_NODE,
                cluster_id: OTHER_CLUSTER,
                flags: 0,
            },
        )
        .unwrap();
    datapath
}

/// Sets a local pod's enforcement flags.
fn enforce(datapath: &mut Datapath, pod: Ipv4Addr, flags: u16) {
    let mut info = datapath.maps.endpoints().unwrap()[&pod.octets()];
    info.flags = flags;
    datapath.maps.upsert_endpoint(pod.octets(), info).unwrap();
}

/// Allows pods of policy group `group` to exchange `protocol`/`port` with
/// `identity` (0 is any identity; protocol 0 any protocol; port 0 any port).
fn allow(
    datapath: &mut Datapath,
    group: u16,
    direction: Direction,
    identity: u32,
    protocol: u8,
    port: u16,
) {
    let bits = match (protocol, port) {
        (0, _) => PolicyKey::FIXED_BITS,
        (_, 0) => PolicyKey::PROTOCOL_BITS,
        _ => PolicyKey::FULL_BITS,
    };
    let key = PolicyKey {
        policy_id: group,
        direction: direction as u8,
        identity: identity.to_be_bytes(),
        protocol,
        port: port.to_be_bytes(),
        ..PolicyKey::default()
    };
    datapath.maps.upsert_policy(key, bits).unwrap();
}

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    Frame::tcp(src, sport, dst, dport, flags).build()
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    Frame::new(src, dst, L4::Udp { sport: 4000, dport }).build()
}

/// The verdict of from-pod on `frame`.
fn from_pod(datapath: &mut Datapath, frame: Vec<u8>) -> i32 {
    testrun::run(datapath, PROG_FROM_POD, &frame).action
}

fn denied(datapath: &Datapath, reason: DropReason) -> u64 {
    datapath
        .maps
        .metrics()
        .unwrap()
        .iter()
        .filter(|(key, _): &(&MetricsKey, _)| key.reason == reason as u8)
        .map(|(_, value)| value.packets)
        .sum()
}

#[test]
fn egress_passes_only_to_allowed_identities_and_ports() {
    let mut datapath = policy_node();
    enforce(&mut datapath, POD_A, EndpointInfo::EGRESS_ENFORCED);
    allow(
        &mut datapath,
        A.0,
        Direction::Egress,
        REMOTE_IDENTITY,
        IPPROTO_TCP,
        80,
    );

    assert_eq!(
        from_pod(&mut datapath, tcp(POD_A, REMOTE_POD, 4000, 80, TCP_SYN)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        from_pod(&mut datapath, tcp(POD_A, REMOTE_POD, 4000, 81, TCP_SYN)),
        TC_ACT_SHOT,
        "other port"
    );
    assert_eq!(
        from_pod(&mut datapath, udp(POD_A, REMOTE_POD, 80)),
        TC_ACT_SHOT,
        "other protocol"
    );
    assert_eq!(
        from_pod(
            &mut datapath,
            tcp(POD_A, POD_OTHER_CLUSTER, 4000, 80, TCP_SYN)
        ),
        TC_ACT_SHOT,
        "another pod of the same cluster and node"
    );
    assert_eq!(
        from_pod(&mut datapath, tcp(POD_A, OUTSIDE, 4000, 80, TCP_SYN)),
        TC_ACT_SHOT,
        "the world"
    );
    assert_eq!(denied(&datapath, DropReason::PolicyDeniedEgress), 4);

    // The node's own address is always reachable (kubelet, node-local DNS).
    let host = Ipv4Addr::from(NODE_IP);
    assert_eq!(from_pod(&mut datapath, udp(POD_A, host, 53)), PASS);
    // A pod without egress policy is not restricted.
    assert_eq!(
        from_pod(&mut datapath, tcp(POD_C, OUTSIDE, 4000, 81, TCP_SYN)),
        PASS
    );
    assert_eq!(denied(&datapath, DropReason::PolicyDeniedEgress), 4);
}

#[test]
fn ingress_between_local_pods_checks_the_senders_identity() {
    let mut datapath = policy_node();
    enforce(&mut datapath, POD_B, EndpointInfo::INGRESS_ENFORCED);
    let b = 2;
    allow(&mut datapath, b, Direction::Ingress, A.1, IPPROTO_UDP, 53);
    allow(&mut datapath, b, Direction::Ingress, 0, IPPROTO_TCP, 443);

    assert_eq!(
        from_pod(&mut datapath, udp(POD_A, POD_B, 53)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        from_pod(&mut datapath, udp(POD_C, POD_B, 53)),
        TC_ACT_SHOT,
        "C is not A"
    );
    assert_eq!(from_pod(&mut datapath, udp(POD_A, POD_B, 54)), TC_ACT_SHOT);
    assert_eq!(
        from_pod(&mut datapath, tcp(POD_C, POD_B, 4000, 443, TCP_SYN)),
        TC_ACT_REDIRECT,
        "443 is open to any identity"
    );
    assert_eq!(denied(&datapath, DropReason::PolicyDeniedIngress), 2);
}

#[test]
fn replies_of_allowed_connections_pass_both_policies() {
    // A may only receive what it asked for; C serves TCP 80 to A and may
    // not open connections itself.
    let mut datapath = policy_node();
    let both = EndpointInfo::INGRESS_ENFORCED | EndpointInfo::EGRESS_ENFORCED;
    enforce(&mut datapath, POD_A, EndpointInfo::INGRESS_ENFORCED);
    enforce(&mut datapath, POD_C, both);
    allow(&mut datapath, C.0, Direction::Ingress, A.1, IPPROTO_TCP, 80);

    assert_eq!(
        from_pod(
            &mut datapath,
            tcp(POD_C, POD_A, 80, 4000, TCP_SYN | TCP_ACK)
        ),
        TC_ACT_SHOT,
        "no reply before a request"
    );
    assert_eq!(
        from_pod(&mut datapath, tcp(POD_A, POD_C, 4000, 80, TCP_SYN)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        from_pod(
            &mut datapath,
            tcp(POD_C, POD_A, 80, 4000, TCP_SYN | TCP_ACK)
        ),
        TC_ACT_REDIRECT,
        "the reply passes C's egress and A's ingress policy"
    );
    assert_eq!(
        from_pod(&mut datapath, tcp(POD_A, POD_C, 4000, 80, TCP_ACK)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        from_pod(&mut datapath, tcp(POD_C, POD_A, 80, 4001, TCP_SYN)),
        TC_ACT_SHOT,
        "another port pair is a new connection"
    );
    assert_eq!(denied(&datapath, DropReason::PolicyDeniedEgress), 2);
}

#[test]
fn a_peers_echo_request_is_not_the_reply_of_one_sent_to_it() {
    // A takes no ingress from C; A pings C, then C pings A with the same
    // echo id (the id is in both "ports", so only the ICMP type tells a
    // request from the reply).
    let mut datapath = policy_node();
    enforce(&mut datapath, POD_A, EndpointInfo::INGRESS_ENFORCED);
    let echo = |src, dst, reply: bool| {
        let (id, seq) = (0x0207, 1);
        let l4 = if reply {
            L4::IcmpEchoReply { id, seq }
        } else {
            L4::IcmpEcho { id, seq }
        };
        Frame::new(src, dst, l4).build()
    };
    assert_eq!(
        from_pod(&mut datapath, echo(POD_A, POD_C, false)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        from_pod(&mut datapath, echo(POD_C, POD_A, false)),
        TC_ACT_SHOT,
        "C's own request is a new flow A's policy denies"
    );
    assert_eq!(
        from_pod(&mut datapath, echo(POD_C, POD_A, true)),
        TC_ACT_REDIRECT,
        "the reply to A's request passes"
    );
    assert_eq!(denied(&datapath, DropReason::PolicyDeniedIngress), 1);
}

#[test]
fn what_the_stack_delivers_is_checked_against_ingress_policy() {
    let mut datapath = policy_node();
    enforce(&mut datapath, POD_C, EndpointInfo::INGRESS_ENFORCED);
    // An ipBlock prefix with its node-local identity, and a pod of a
    // cluster nobody allowed: same index as the allowed identity, other
    // cluster.
    let cidr_identity = identity::make(0, 256);
    let unknown_cluster_pod = Ipv4Addr::new(10, 9, 0, 20);
    let entry = |identity, cluster_id| IpcacheEntry {
        identity,
        tunnel_endpoint: [0; 4],
        cluster_id,
        flags: 0,
    };
    let maps = &mut datapath.maps;
    maps.upsert_ipcache("198.51.100.0/24".parse().unwrap(), entry(cidr_identity, 0))
        .unwrap();
    maps.upsert_ipcache(
        "10.9.0.0/16".parse().unwrap(),
        entry(identity::make(9, 0x120), 9),
    )
    .unwrap();
    allow(
        &mut datapath,
        C.0,
        Direction::Ingress,
        cidr_identity,
        IPPROTO_TCP,
        80,
    );
    allow(
        &mut datapath,
        C.0,
        Direction::Ingress,
        REMOTE_IDENTITY,
        0,
        0,
    );
    let run = |datapath: &mut Datapath, frame: Vec<u8>| {
        testrun::run(datapath, PROG_TO_POD, &frame).action
    };

    let in_block = Ipv4Addr::new(198, 51, 100, 7);
    assert_eq!(
        run(&mut datapath, tcp(in_block, POD_C, 4000, 80, TCP_SYN)),
        PASS
    );
    assert_eq!(
        run(&mut datapath, tcp(in_block, POD_C, 4000, 22, TCP_SYN)),
        TC_ACT_SHOT
    );
    assert_eq!(
        run(&mut datapath, tcp(OUTSIDE, POD_C, 4000, 80, TCP_SYN)),
        TC_ACT_SHOT,
        "world"
    );
    assert_eq!(
        run(
            &mut datapath,
            tcp(unknown_cluster_pod, POD_C, 4000, 80, TCP_SYN)
        ),
        TC_ACT_SHOT,
        "an identity of a cluster no rule names"
    );
    assert_eq!(
        run(&mut datapath, udp(REMOTE_POD, POD_C, 7)),
        PASS,
        "the allowed cluster-2 identity"
    );
    let host = Ipv4Addr::from(NODE_IP);
    assert_eq!(
        run(&mut datapath, tcp(host, POD_C, 4000, 8080, TCP_SYN)),
        PASS,
        "kubelet probes"
    );
    assert_eq!(
        run(&mut datapath, udp(OUTSIDE, POD_B, 7)),
        PASS,
        "B has no policy"
    );
    assert_eq!(denied(&datapath, DropReason::PolicyDeniedIngress), 3);
}

#[test]
fn every_denial_emits_an_event_naming_both_ends() {
    let mut datapath = policy_node();
    enforce(&mut datapath, POD_A, EndpointInfo::EGRESS_ENFORCED);
    enforce(&mut datapath, POD_C, EndpointInfo::INGRESS_ENFORCED);
    assert!(datapath.maps.drain_events().is_empty());

    testrun::run(
        &mut datapath,
        PROG_FROM_POD,
        &tcp(POD_A, REMOTE_POD, 4321, 443, TCP_SYN),
    );
    testrun::run(&mut datapath, PROG_TO_POD, &udp(REMOTE_POD, POD_C, 53));
    // Allowed by A's egress policy, denied by C's ingress policy on this
    // node, in from-pod: told as ingress, the direction of the policy that
    // denied it, as across nodes.
    allow(&mut datapath, A.0, Direction::Egress, C.1, IPPROTO_UDP, 53);
    testrun::run(&mut datapath, PROG_FROM_POD, &udp(POD_A, POD_C, 53));
    let events = datapath.maps.drain_events();
    let expected = [
        FlowEvent {
            src: POD_A.octets(),
            dst: REMOTE_POD.octets(),
            src_identity: A.1,
            dst_identity: REMOTE_IDENTITY,
            src_cluster: LOCAL_CLUSTER,
            dst_cluster: OTHER_CLUSTER,
            src_port: 4321u16.to_be(),
            dst_port: 443u16.to_be(),
            protocol: IPPROTO_TCP,
            reason: DropReason::PolicyDeniedEgress as u8,
            direction: Direction::Egress as u8,
            ..FlowEvent::default()
        },
        FlowEvent {
            src: REMOTE_POD.octets(),
            dst: POD_C.octets(),
            src_identity: REMOTE_IDENTITY,
            dst_identity: C.1,
            src_cluster: OTHER_CLUSTER,
            dst_cluster: LOCAL_CLUSTER,
            src_port: 4000u16.to_be(),
            dst_port: 53u16.to_be(),
            protocol: IPPROTO_UDP,
            reason: DropReason::PolicyDeniedIngress as u8,
            direction: Direction::Ingress as u8,
            ..FlowEvent::default()
        },
        FlowEvent {
            src: POD_A.octets(),
            dst: POD_C.octets(),
            src_identity: A.1,
            dst_identity: C.1,
            src_cluster: LOCAL_CLUSTER,
            dst_cluster: LOCAL_CLUSTER,
            src_port: 4000u16.to_be(),
            dst_port: 53u16.to_be(),
            protocol: IPPROTO_UDP,
            reason: DropReason::PolicyDeniedIngress as u8,
            direction: Direction::Ingress as u8,
            ..FlowEvent::default()
        },
    ];
    assert_eq!(events.len(), 3, "{events:?}");
    for (event, expected) in events.iter().zip(expected) {
        assert!(event.timestamp > 0);
        assert_eq!(
            FlowEvent {
                timestamp: 0,
                ..*event
            },
            expected
        );
    }
}
