//! Load balancing through BPF_PROG_TEST_RUN, with the service maps written
//! by the agent's own programmer (Maglev slices included): DNAT of a SYN to
//! a VIP and reverse NAT of its reply with checksums recomputed, UDP, a
//! frontend without backends, conntrack keeping a flow on its backend when
//! the backend set changes, and flows spread over backends as Maglev says.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use dataplane_common::{
    CtEntry, CtKey, Direction, DropReason, ServiceKey, Verdict,
    maps::PROG_FROM_POD,
    service::{PROTO_TCP, PROTO_UDP},
};
use fleetnet_agent::{
    datapath::{
        Datapath, clock::monotonic_ns, programmers::services::ServiceProgrammer, sweep_conntrack,
    },
    metrics::Metrics,
    services::{
        catalog::ServiceName,
        merge::{ActiveBackend, Frontend},
    },
};
use fleetnet_testing::{
    fleet_in_a_box,
    packet::{self, Frame, L4, TCP_ACK, TCP_RST, TCP_SYN},
    scenario::*,
    testrun::{self, TEST_SIZES},
};

const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const VIP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 10);
const REMOTE_BACKEND: Ipv4Addr = POD_OTHER_CLUSTER;

struct Services {
    datapath: Datapath,
    programmer: ServiceProgrammer,
    metrics: Metrics,
}

impl Services {
    fn new() -> Self {
        Self::with(node())
    }

    fn with(datapath: Datapath) -> Self {
        Self {
            datapath,
            programmer: ServiceProgrammer::new(
                BTreeMap::new(),
                BTreeMap::new(),
                TEST_SIZES.maglev_table_size,
                TEST_SIZES.max_service_ids,
            ),
            metrics: Metrics::default(),
        }
    }

    /// Serves `port`/`protocol` on the VIP with `backends` (cluster, ip, port).
    fn serve(&mut self, port: u16, protocol: u8, backends: &[(u16, Ipv4Addr, u16)]) {
        let key = ServiceKey {
            vip: VIP.octets(),
            port: port.to_be(),
            protocol,
            _pad: 0,
        };
        let mut backends: Vec<ActiveBackend> = backends
            .iter()
            .map(|(cluster_id, ip, port)| ActiveBackend {
                cluster_id: *cluster_id,
                ip: *ip,
                port: *port,
            })
            .collect();
        backends.sort();
        let frontend = Frontend {
            service: ServiceName {
                namespace: "shop".into(),
                name: "web".into(),
            },
            backends,
        };
        self.programmer.program(
            &BTreeMap::from([(key, frontend)]),
            &mut self.datapath.maps,
            &self.metrics,
        );
    }

    fn send(&mut self, frame: &Frame) -> testrun::Outcome {
        testrun::run(&mut self.datapath, PROG_FROM_POD, &frame.build())
    }
}

#[test]
fn a_syn_to_a_vip_is_dnated_and_its_reply_reverse_nated() {
    let mut lb = Services::new();
    lb.serve(80, PROTO_TCP, &[(LOCAL_CLUSTER, POD_C, 8080)]);

    let syn = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    assert_eq!(
        syn.action, TC_ACT_REDIRECT,
        "delivered to the local backend"
    );
    let ip = packet::parse_ipv4(&syn.packet).unwrap();
    assert_eq!((ip.src, ip.dst), (POD_A, POD_C));
    assert_eq!(packet::ports(&syn.packet), Some((40000, 8080)));
    assert_eq!(ip.dst_mac, POD_C_MAC);
    assert!(packet::checksums_valid(&syn.packet), "checksums after DNAT");
    let entries = lb.datapath.maps.conntrack().unwrap();
    assert_eq!(entries.len(), 2, "both directions tracked: {entries:?}");

    let reply = lb.send(&Frame::tcp(POD_C, 8080, POD_A, 40000, TCP_SYN | TCP_ACK));
    assert_eq!(
        reply.action, TC_ACT_REDIRECT,
        "reply delivered to the client"
    );
    let ip = packet::parse_ipv4(&reply.packet).unwrap();
    assert_eq!(
        (ip.src, ip.dst),
        (VIP, POD_A),
        "the client sees the VIP answer"
    );
    assert_eq!(packet::ports(&reply.packet), Some((80, 40000)));
    assert!(
        packet::checksums_valid(&reply.packet),
        "checksums after reverse NAT"
    );

    // A reply that matches no connection is not rewritten.
    let stray = lb.send(&Frame::tcp(POD_C, 8080, POD_A, 41000, TCP_ACK));
    assert_eq!(packet::parse_ipv4(&stray.packet).unwrap().src, POD_C);

    // A SYN opens a connection and never answers one (from-pod skips the
    // reply lookup for it): on the reply's very tuple it is not rewritten.
    let syn = lb.send(&Frame::tcp(POD_C, 8080, POD_A, 40000, TCP_SYN));
    assert_eq!(packet::parse_ipv4(&syn.packet).unwrap().src, POD_C);
}

/// A client's reset closes both directions of a service connection. Its
/// port used again within the closing lifetime: for a direct connection
/// to the backend, whose replies must not come back from the VIP; then
/// for the VIP again, whose replies must.
#[test]
fn a_reused_client_port_gets_the_translation_of_its_new_connection() {
    let mut lb = Services::new();
    lb.serve(80, PROTO_TCP, &[(LOCAL_CLUSTER, POD_C, 8080)]);
    let reply_source = |lb: &mut Services| {
        let reply = lb.send(&Frame::tcp(POD_C, 8080, POD_A, 40000, TCP_SYN | TCP_ACK));
        packet::parse_ipv4(&reply.packet).unwrap().src
    };

    lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    assert_eq!(reply_source(&mut lb), VIP);
    lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_RST | TCP_ACK));
    let closing = lb.datapath.maps.conntrack().unwrap();
    assert!(
        closing
            .iter()
            .all(|(_, entry)| entry.state == dataplane_common::CtEntry::CLOSING),
        "the client's reset closed only its own direction: {closing:?}"
    );

    let direct = lb.send(&Frame::tcp(POD_A, 40000, POD_C, 8080, TCP_SYN));
    assert_eq!(packet::parse_ipv4(&direct.packet).unwrap().dst, POD_C);
    assert_eq!(
        reply_source(&mut lb),
        POD_C,
        "the direct connection's SYN-ACK was translated to the closed service connection's VIP"
    );
    lb.send(&Frame::tcp(POD_A, 40000, POD_C, 8080, TCP_RST | TCP_ACK));

    let again = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    assert_eq!(packet::parse_ipv4(&again.packet).unwrap().dst, POD_C);
    assert_eq!(
        reply_source(&mut lb),
        VIP,
        "the reopened service connection's SYN-ACK kept the backend's address"
    );
    let states: Vec<u8> = lb
        .datapath
        .maps
        .conntrack()
        .unwrap()
        .into_iter()
        .map(|(_, entry)| entry.state)
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(
        !states.contains(&dataplane_common::CtEntry::CLOSING),
        "the reopened connection is still tracked as closing: {states:?}"
    );
}

/// A SYN on the tuple of an established connection is a new connection
/// (the old one ended unseen, its backend gone): balanced afresh. A SYN
/// still in the handshake is a retransmission and keeps its backend.
#[test]
fn a_syn_after_the_handshake_is_balanced_afresh_and_a_retransmission_is_not() {
    let mut lb = Services::new();
    lb.serve(80, PROTO_TCP, &[(LOCAL_CLUSTER, POD_C, 8080)]);
    lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    lb.send(&Frame::tcp(POD_C, 8080, POD_A, 40000, TCP_SYN | TCP_ACK));
    lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_ACK));
    lb.send(&Frame::tcp(POD_A, 40001, VIP, 80, TCP_SYN));
    lb.serve(80, PROTO_TCP, &[(OTHER_CLUSTER, REMOTE_BACKEND, 8080)]);

    let retransmitted = lb.send(&Frame::tcp(POD_A, 40001, VIP, 80, TCP_SYN));
    assert_eq!(
        packet::parse_ipv4(&retransmitted.packet).unwrap().dst,
        POD_C,
        "a retransmitted SYN left its backend"
    );
    let new = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    assert_eq!(
        packet::parse_ipv4(&new.packet).unwrap().dst,
        REMOTE_BACKEND,
        "a new connection on an established tuple followed the old one's backend"
    );
}

/// Either entry of a service connection can be lost while the other lives
/// on: evicted from a full LRU table, or removed by a conntrack sweep that
/// raced a reused port. The next packet of the surviving direction makes
/// it again.
#[test]
fn a_lost_conntrack_entry_is_made_again_by_the_other_direction() {
    let mut lb = Services::new();
    lb.serve(80, PROTO_TCP, &[(LOCAL_CLUSTER, POD_C, 8080)]);
    let entry_for = |lb: &Services, direction: u8| {
        lb.datapath
            .maps
            .conntrack()
            .unwrap()
            .into_iter()
            .find(|(key, _)| key.direction == direction)
            .map(|(key, _)| key)
    };

    // The reply entry lost after the SYN: the retransmitted SYN meets a
    // live original entry, and must bring the reverse NAT back.
    lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    let reply = entry_for(&lb, CtKey::REPLY).expect("a reply entry");
    lb.datapath.maps.remove_conntrack(&reply).unwrap();
    let again = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    assert_eq!(packet::parse_ipv4(&again.packet).unwrap().dst, POD_C);
    let syn_ack = lb.send(&Frame::tcp(POD_C, 8080, POD_A, 40000, TCP_SYN | TCP_ACK));
    assert_eq!(
        packet::parse_ipv4(&syn_ack.packet).unwrap().src,
        VIP,
        "the SYN-ACK after a lost reply entry came from the backend's address"
    );

    // The original entry of the established connection lost: the
    // backend's next reply once its entry is due a refresh (a second)
    // makes it again, so the client's next packet stays on its backend
    // though the Service's backends changed meanwhile.
    let original = entry_for(&lb, CtKey::ORIGINAL).expect("an original entry");
    lb.datapath.maps.remove_conntrack(&original).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    lb.send(&Frame::tcp(POD_C, 8080, POD_A, 40000, TCP_ACK));
    lb.serve(80, PROTO_TCP, &[(OTHER_CLUSTER, REMOTE_BACKEND, 8080)]);
    let next = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_ACK));
    assert_eq!(
        packet::parse_ipv4(&next.packet).unwrap().dst,
        POD_C,
        "the connection moved to another backend after its original entry was lost"
    );
}

/// The agent's sweep deletes exactly the expired entries, as it walks,
/// however many there are.
#[test]
fn the_conntrack_sweep_deletes_expired_entries_and_keeps_live_ones() {
    let pins = Path::new("/sys/fs/bpf/fleetnet").join(fleet_in_a_box::unique_name());
    std::fs::create_dir_all(&pins).unwrap();
    let mut lb = Services::with(node_at(Some(&pins)));
    lb.serve(80, PROTO_TCP, &[(LOCAL_CLUSTER, POD_C, 8080)]);
    // 150 connections closed (10 s to live), 150 opening (60 s): 600
    // entries, well within the test's table (1,024, no eviction).
    for port in 20000..20150 {
        lb.send(&Frame::tcp(POD_A, port, VIP, 80, TCP_SYN));
        lb.send(&Frame::tcp(POD_A, port, VIP, 80, TCP_RST | TCP_ACK));
        lb.send(&Frame::tcp(POD_A, port + 1000, VIP, 80, TCP_SYN));
    }
    let now = monotonic_ns();
    let swept = |at_seconds: u64| sweep_conntrack(&pins, now + at_seconds * 1_000_000_000);
    let live = |at_seconds: u64| swept(at_seconds).unwrap().live;

    let first = swept(0).unwrap();
    assert_eq!(first.live, 600, "nothing has expired yet");
    assert_eq!(
        first.balanced_to,
        [(LOCAL_CLUSTER, 150)].into(),
        "the opening connections count towards their backend's cluster, the closed ones not"
    );
    assert_eq!(lb.datapath.maps.conntrack().unwrap().len(), 600);
    assert_eq!(live(30), 300, "the closed ones expired");
    let left = lb.datapath.maps.conntrack().unwrap();
    assert_eq!(left.len(), 300);
    assert!(
        left.iter()
            .all(|(_, entry)| entry.state == CtEntry::TCP_OPENING),
        "a closed connection's entry survived the sweep"
    );
    assert_eq!(live(120), 0);
    assert!(lb.datapath.maps.conntrack().unwrap().is_empty());
    drop(lb);
    std::fs::remove_dir_all(&pins).unwrap();
}

#[test]
fn udp_is_balanced_and_a_zero_udp_checksum_stays_zero() {
    let mut lb = Services::new();
    lb.serve(53, PROTO_UDP, &[(LOCAL_CLUSTER, POD_C, 5353)]);
    let query = Frame::new(
        POD_A,
        VIP,
        L4::Udp {
            sport: 33000,
            dport: 53,
        },
    );
    let out = lb.send(&query);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(packet::parse_ipv4(&out.packet).unwrap().dst, POD_C);
    assert_eq!(packet::ports(&out.packet), Some((33000, 5353)));
    assert!(packet::checksums_valid(&out.packet));

    let mut frame = Frame::new(
        POD_A,
        VIP,
        L4::Udp {
            sport: 33001,
            dport: 53,
        },
    )
    .build();
    let at = 14 + 20 + 6;
    frame[at..at + 2].copy_from_slice(&[0, 0]);
    let out = testrun::run(&mut lb.datapath, PROG_FROM_POD, &frame);
    assert_eq!(packet::parse_ipv4(&out.packet).unwrap().dst, POD_C);
    assert_eq!(
        packet::udp_checksum(&out.packet),
        Some(0),
        "no checksum stays no checksum"
    );
    let header = &out.packet[14..34];
    assert_eq!(
        packet::internet_checksum(header),
        0,
        "the IPv4 checksum is still right"
    );
}

#[test]
fn a_frontend_without_ready_backends_drops_with_its_own_reason() {
    let mut lb = Services::new();
    lb.serve(80, PROTO_TCP, &[]);
    let out = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    assert_eq!(out.action, TC_ACT_SHOT);
    let metrics = lb.datapath.maps.metrics().unwrap();
    let counted = metrics.iter().any(|(key, value)| {
        key.reason == DropReason::NoBackend as u8
            && key.direction == Direction::Egress as u8
            && value.packets == 1
    });
    assert!(counted, "{metrics:?}");
}

#[test]
fn a_vip_of_another_cluster_backend_is_tunnelled_after_dnat() {
    let mut lb = Services::new();
    lb.serve(80, PROTO_TCP, &[(OTHER_CLUSTER, REMOTE_BACKEND, 8080)]);
    let out = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(packet::parse_ipv4(&out.packet).unwrap().dst, REMOTE_BACKEND);
    let metrics = lb.datapath.maps.metrics().unwrap();
    let tunnelled = metrics
        .iter()
        .any(|(key, _)| key.reason == Verdict::Tunnelled as u8 && key.dst_cluster == OTHER_CLUSTER);
    assert!(tunnelled, "{metrics:?}");
}

#[test]
fn an_established_flow_keeps_its_backend_when_the_backend_set_changes() {
    let mut lb = Services::new();
    let backends = [
        (LOCAL_CLUSTER, POD_C, 8080),
        (OTHER_CLUSTER, REMOTE_BACKEND, 8080),
    ];
    lb.serve(80, PROTO_TCP, &backends);
    let first = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_SYN));
    let chosen = packet::parse_ipv4(&first.packet).unwrap().dst;
    let other = if chosen == POD_C {
        REMOTE_BACKEND
    } else {
        POD_C
    };

    // The chosen backend leaves the service: new flows go elsewhere, the
    // established one keeps going to it (conntrack hit, no LB).
    let remaining: Vec<_> = backends
        .iter()
        .copied()
        .filter(|(_, ip, _)| *ip == other)
        .collect();
    lb.serve(80, PROTO_TCP, &remaining);
    let later = lb.send(&Frame::tcp(POD_A, 40000, VIP, 80, TCP_ACK));
    assert_eq!(
        packet::parse_ipv4(&later.packet).unwrap().dst,
        chosen,
        "the connection moved"
    );
    for sport in 41000..41020 {
        let new = lb.send(&Frame::tcp(POD_A, sport, VIP, 80, TCP_SYN));
        assert_eq!(
            packet::parse_ipv4(&new.packet).unwrap().dst,
            other,
            "a new flow went to a removed backend"
        );
    }
    let original = CtKey {
        src: POD_A.octets(),
        dst: VIP.octets(),
        src_port: 40000u16.to_be(),
        dst_port: 80u16.to_be(),
        protocol: PROTO_TCP,
        direction: CtKey::ORIGINAL,
        icmp_echo: 0,
        _pad: 0,
    };
    let entry = lb
        .datapath
        .maps
        .conntrack()
        .unwrap()
        .into_iter()
        .find(|(key, _)| *key == original)
        .unwrap()
        .1;
    assert_eq!(
        entry.state,
        dataplane_common::CtEntry::ESTABLISHED,
        "the ACK moved the flow to established"
    );
}

/// Many flows from one client spread over the backends as the Maglev
/// table says: each backend's share is near 1/N.
#[test]
fn flows_spread_over_backends_in_proportion_and_are_counted_per_cluster() {
    let mut lb = Services::new();
    let backends: Vec<(u16, Ipv4Addr, u16)> = vec![
        (LOCAL_CLUSTER, POD_C, 8080),
        (OTHER_CLUSTER, REMOTE_BACKEND, 8080),
        (LOCAL_CLUSTER, POD_SAME_CLUSTER, 8080),
    ];
    lb.serve(80, PROTO_TCP, &backends);
    let flows = 3000u16;
    let mut counts: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    for sport in 0..flows {
        let out = lb.send(&Frame::tcp(POD_A, 20000 + sport, VIP, 80, TCP_SYN));
        *counts
            .entry(packet::parse_ipv4(&out.packet).unwrap().dst)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (backend, count) in &counts {
        let share = f64::from(*count) / f64::from(flows);
        assert!(
            (share - 1.0 / 3.0).abs() < 0.05,
            "{backend}: share {share:.3} of {flows} flows ({counts:?})"
        );
    }

    // Each new connection is counted once, under its backend's cluster;
    // packets of established connections (the latest ones, still in the
    // test's small conntrack) are not selections.
    for sport in flows - 100..flows {
        lb.send(&Frame::tcp(POD_A, 20000 + sport, VIP, 80, TCP_ACK));
    }
    let selections = lb.datapath.maps.counters().selections().unwrap();
    let by_cluster = |cluster: u16| -> u64 {
        selections
            .iter()
            .filter(|(key, _)| key.cluster_id == cluster)
            .map(|(_, count)| count)
            .sum()
    };
    assert_eq!(
        by_cluster(LOCAL_CLUSTER),
        u64::from(counts[&POD_C] + counts[&POD_SAME_CLUSTER])
    );
    assert_eq!(
        by_cluster(OTHER_CLUSTER),
        u64::from(counts[&REMOTE_BACKEND])
    );
    let services: std::collections::BTreeSet<u32> =
        selections.keys().map(|key| key.service_id).collect();
    assert_eq!(services.len(), 1, "one service: {selections:?}");
}

/// The Maglev slice the programmer writes (one batch per change) reads
/// back whole: every slot names a served backend, in near-equal shares,
/// and after a backend leaves no slot names it.
#[test]
fn the_maglev_slice_in_the_map_follows_the_backend_set() {
    let mut lb = Services::new();
    let backends = [
        (LOCAL_CLUSTER, POD_C, 8080),
        (OTHER_CLUSTER, REMOTE_BACKEND, 8080),
        (OTHER_CLUSTER, REMOTE_BACKEND, 9090),
    ];
    let slots_by_backend = |lb: &Services| {
        let (_, id) = lb.programmer.service_ids().next().expect("one frontend");
        let ids = lb.datapath.maps.backends().unwrap();
        let slice = lb
            .datapath
            .maps
            .maglev(id, TEST_SIZES.maglev_table_size)
            .unwrap();
        let mut shares: BTreeMap<(Ipv4Addr, u16), usize> = BTreeMap::new();
        for backend in slice {
            let backend = ids.get(&backend).expect("every slot names a backend");
            let ip = Ipv4Addr::from(backend.addr.as_v4().unwrap());
            *shares.entry((ip, u16::from_be(backend.port))).or_default() += 1;
        }
        shares
    };
    lb.serve(80, PROTO_TCP, &backends);
    let shares = slots_by_backend(&lb);
    assert_eq!(shares.len(), 3, "{shares:?}");
    let size = TEST_SIZES.maglev_table_size as usize;
    for share in shares.values() {
        assert!(
            share * 3 >= size * 9 / 10 && share * 3 <= size * 11 / 10,
            "unequal shares {shares:?}"
        );
    }
    lb.serve(80, PROTO_TCP, &backends[1..2]);
    assert_eq!(
        slots_by_backend(&lb),
        BTreeMap::from([((REMOTE_BACKEND, 8080), size)])
    );
}
