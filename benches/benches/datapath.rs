//! Per-packet cost of the datapath programs through BPF_PROG_TEST_RUN,
//! side by side with an empty classifier (the floor) in the same run.
//! Absolute numbers move with the machine; the ratios are the figures.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dataplane_common::{
    Direction, EndpointInfo, IpcacheEntry, PolicyKey, ServiceKey, identity,
    maps::{
        PROG_FLOOR, PROG_FROM_OVERLAY, PROG_FROM_POD, PROG_FROM_POD_STAGES, PROG_FROM_UNDERLAY,
        PROG_TO_POD,
    },
    service::PROTO_TCP,
};
use fleetnet_agent::{
    datapath::{Datapath, MapSizes, programmers::services::ServiceProgrammer},
    metrics::Metrics,
    services::{
        catalog::ServiceName,
        merge::{ActiveBackend, Frontend},
    },
};
use fleetnet_benches::{self as bench, Figure};
use fleetnet_testing::{
    packet::{Frame, L4, TCP_ACK, TCP_SYN},
    scenario::{self, OTHER_CLUSTER, OUTSIDE, POD_A, POD_B, POD_OTHER_CLUSTER, POD_SAME_CLUSTER},
    testrun::{self, TEST_SIZES},
};

/// 250 repeats per call on a TTL-255 packet keep every repeat on the same
/// path; 4,000 calls make 1M packets per case (40 in quick mode).
const REPEAT: u32 = 250;
fn calls() -> usize {
    bench::size(4_000, 40)
}
/// One run per call, for cases that rewrite the packet they run on.
fn single_runs() -> usize {
    bench::size(50_000, 500)
}
const GROUP: &str = "Per-packet cost (BPF_PROG_TEST_RUN, ns/packet)";

/// Prints a case and records it, as a ratio to `baseline` (ns, name).
fn show(name: &str, ns: f64, (baseline, baseline_name): (f64, &str)) {
    println!("{name:<54} {ns:>10.1} {:>9.2}x", ns / baseline);
    Figure::new(GROUP, name, ns, "ns/packet")
        .versus(baseline, baseline_name)
        .record();
}
const VIP: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 10);

fn tcp(src_port: u16, dst: Ipv4Addr, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut frame = Frame::new(
        POD_A,
        dst,
        L4::Tcp {
            sport: src_port,
            dport: dst_port,
            flags,
        },
    );
    frame.ttl = 255;
    frame.build()
}

fn main() {
    let mut datapath = scenario::node();
    let routing = [
        (
            "empty classifier (floor)",
            PROG_FLOOR,
            tcp(40000, POD_B, 80, TCP_SYN),
        ),
        (
            "from-pod: local pod (redirect_peer)",
            PROG_FROM_POD,
            tcp(40000, POD_B, 80, TCP_SYN),
        ),
        (
            "from-pod: other node, same cluster (VXLAN)",
            PROG_FROM_POD,
            tcp(40000, POD_SAME_CLUSTER, 80, TCP_SYN),
        ),
        (
            "from-pod: other cluster (VXLAN)",
            PROG_FROM_POD,
            tcp(40000, POD_OTHER_CLUSTER, 80, TCP_SYN),
        ),
        (
            "from-pod: outside the mesh (to stack)",
            PROG_FROM_POD,
            tcp(40000, OUTSIDE, 80, TCP_SYN),
        ),
    ];
    println!(
        "BPF_PROG_TEST_RUN, median of {} calls x {REPEAT} repeats ({} packets) per case",
        calls(),
        calls() as u32 * REPEAT
    );
    println!("{:<54} {:>10} {:>10}", "case", "ns/packet", "vs floor");
    let mut floor = None;
    let mut other_cluster = 0.0;
    for (name, program, packet) in routing {
        let ns = testrun::ns_per_packet(&mut datapath, program, &packet, REPEAT, calls());
        let floor = *floor.get_or_insert(ns);
        show(name, ns, (floor, "empty classifier (floor)"));
        if name == "from-pod: other cluster (VXLAN)" {
            other_cluster = ns;
        }
    }
    fleet_sized_ipcache(other_cluster);
    stages(&mut datapath);
    sizes(&mut datapath);

    // A service with three backends, one in another cluster.
    let mut programmer = ServiceProgrammer::new(
        BTreeMap::new(),
        BTreeMap::new(),
        TEST_SIZES.maglev_table_size,
        TEST_SIZES.max_service_ids,
    );
    let key = ServiceKey {
        vip: VIP.octets(),
        port: 80u16.to_be(),
        protocol: PROTO_TCP,
        _pad: 0,
    };
    let backends = vec![
        ActiveBackend {
            cluster_id: 1,
            ip: POD_B,
            port: 8080,
        },
        ActiveBackend {
            cluster_id: 1,
            ip: POD_SAME_CLUSTER,
            port: 8080,
        },
        ActiveBackend {
            cluster_id: OTHER_CLUSTER,
            ip: POD_OTHER_CLUSTER,
            port: 8080,
        },
    ];
    let frontend = Frontend {
        service: ServiceName {
            namespace: "bench".into(),
            name: "web".into(),
        },
        backends,
    };
    programmer.program(
        &BTreeMap::from([(key, frontend)]),
        &mut datapath.maps,
        &Metrics::default(),
    );

    let floor_packets: Vec<Vec<u8>> = (0..single_runs())
        .map(|_| tcp(40000, POD_B, 80, TCP_SYN))
        .collect();
    let new_connections: Vec<Vec<u8>> = (0..single_runs())
        .map(|i| tcp(10000 + (i % 50_000) as u16, VIP, 80, TCP_SYN))
        .collect();
    // One connection, opened once, then its packets hit conntrack.
    testrun::run(&mut datapath, PROG_FROM_POD, &tcp(9999, VIP, 80, TCP_SYN));
    let established: Vec<Vec<u8>> = (0..single_runs())
        .map(|_| tcp(9999, VIP, 80, TCP_ACK))
        .collect();
    println!();
    println!(
        "one run per call (the service cases rewrite the packet), median of {} calls",
        single_runs()
    );
    println!("{:<54} {:>10} {:>10}", "case", "ns/packet", "vs floor");
    let floor = testrun::ns_each(&mut datapath, PROG_FLOOR, &floor_packets);
    for (name, program, packets) in [
        ("empty classifier (floor)", PROG_FLOOR, &floor_packets),
        (
            "from-pod: new connection to a VIP (LB + conntrack insert)",
            PROG_FROM_POD,
            &new_connections,
        ),
        (
            "from-pod: established connection to a VIP (conntrack hit)",
            PROG_FROM_POD,
            &established,
        ),
    ] {
        let ns = testrun::ns_each(&mut datapath, program, packets);
        let name = format!("{name}, one run per call");
        show(
            &name,
            ns,
            (floor, "empty classifier (floor), one run per call"),
        );
    }

    stage_by_stage(
        "ACK of an established connection to a VIP, one run per call",
        |program| testrun::ns_each(&mut datapath, program, &established),
    );

    sampling(&mut datapath);
    policy(&mut datapath);
}

const STAGES_GROUP: &str = "from-pod stage by stage (BPF_PROG_TEST_RUN, ns each stage adds)";

/// from-pod cut short after each stage, in order, in one run: what each
/// stage adds over the variant before it (the first, over the empty
/// classifier), for a new connection's SYN and an established one's ACK
/// to another cluster, and a SYN to a local pod (an established
/// connection to a VIP is broken down in `main`, where the service is).
/// Noise of a few ns can make a cheap stage's figure negative.
fn stages(datapath: &mut Datapath) {
    for (case, packet) in [
        (
            "SYN to another cluster",
            tcp(40000, POD_OTHER_CLUSTER, 80, TCP_SYN),
        ),
        (
            "ACK to another cluster",
            tcp(40000, POD_OTHER_CLUSTER, 80, TCP_ACK),
        ),
        ("SYN to a local pod", tcp(40000, POD_B, 80, TCP_SYN)),
    ] {
        stage_by_stage(case, |program| {
            testrun::ns_per_packet(datapath, program, &packet, REPEAT, calls())
        });
    }
}

/// Prints and records what each stage of from-pod adds for `case`, with
/// `cost` measuring a program's ns per packet.
fn stage_by_stage(case: &str, mut cost: impl FnMut(&str) -> f64) {
    let mut variants: Vec<(&str, &str)> = vec![("empty classifier (floor)", PROG_FLOOR)];
    variants.extend(PROG_FROM_POD_STAGES);
    variants.push(("metrics and events (the whole program)", PROG_FROM_POD));
    println!();
    println!("from-pod {case}, stage by stage");
    println!("{:<54} {:>10} {:>10}", "stage", "ns/packet", "adds");
    let costs: Vec<f64> = variants.iter().map(|(_, program)| cost(program)).collect();
    for (index, ((stage, _), ns)) in variants.iter().zip(&costs).enumerate().skip(1) {
        let added = ns - costs[index - 1];
        println!("{stage:<54} {ns:>10.1} {added:>+10.1}");
        Figure::new(
            STAGES_GROUP,
            &format!("{case}: {stage}"),
            added,
            "ns/packet added",
        )
        .record();
    }
}

const SIZES_GROUP: &str = "Program size and verifier complexity (as loaded by the kernel)";

/// Each attached program's size as the kernel holds it (BPF instructions
/// after the verifier's rewrites, and bytes of JITed code) and the
/// instructions the verifier walked to accept it (its complexity: the
/// kernel refuses a program past 1M).
fn sizes(datapath: &mut Datapath) {
    println!();
    println!(
        "{:<54} {:>10} {:>10} {:>10}",
        "program", "insns", "jited B", "verified"
    );
    for program in [
        PROG_FROM_POD,
        PROG_FROM_OVERLAY,
        PROG_FROM_UNDERLAY,
        PROG_TO_POD,
    ] {
        let info = datapath
            .program(program)
            .expect("program is in the object")
            .info()
            .expect("the kernel describes a loaded program");
        let instructions = info.size_translated().unwrap_or(0) / 8;
        let verified = info.verified_instruction_count().unwrap_or(0);
        println!(
            "{program:<54} {instructions:>10} {:>10} {verified:>10}",
            info.size_jitted()
        );
        for (what, value, unit) in [
            ("instructions", instructions, "instructions"),
            ("JITed code", info.size_jitted(), "bytes"),
            ("verifier complexity", verified, "instructions verified"),
        ] {
            Figure::new(
                SIZES_GROUP,
                &format!("{program}: {what}"),
                value.into(),
                unit,
            )
            .record();
        }
    }
}

/// The other-cluster path with the ipcache of a fleet of thousands of
/// clusters (32,768 node CIDRs, /27s, and 50,000 exported endpoints
/// inside them), against the small map's figure of the same run: to an
/// exported endpoint (a /32) and to a pod known by its node's CIDR only.
fn fleet_sized_ipcache(small: f64) {
    const NODES: u32 = 32_768;
    const ENDPOINTS: u32 = 50_000;
    let sizes = MapSizes {
        ipcache: 131_072,
        ..TEST_SIZES
    };
    let mut datapath = scenario::node_sized(sizes, None);
    // Node i's /27 in 10.16.0.0/12, its cluster 100 + i / 8.
    let node_net = |i: u32| {
        let base = u32::from(Ipv4Addr::new(10, 16, 0, 0)) + i * 32;
        (Ipv4Addr::from(base), 100 + (i / 8) as u16)
    };
    for i in 0..NODES {
        let (network, cluster) = node_net(i);
        let entry = IpcacheEntry {
            identity: identity::cluster_pods(cluster),
            tunnel_endpoint: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i).octets(),
            cluster_id: cluster,
            flags: 0,
        };
        let cidr = ipnet::Ipv4Net::new(network, 27).expect("a /27");
        datapath
            .maps
            .upsert_ipcache(cidr, entry)
            .expect("writing the ipcache");
    }
    // Endpoints spread over the nodes, at offsets 1.. of their /27s.
    let endpoint_ip = |e: u32| {
        let (network, cluster) = node_net(e % NODES);
        (Ipv4Addr::from(u32::from(network) + 1 + e / NODES), cluster)
    };
    for e in 0..ENDPOINTS {
        let (ip, cluster) = endpoint_ip(e);
        let mut entry = datapath.maps.ipcache_lookup(ip).expect("its node's CIDR");
        entry.identity = identity::make(cluster, 256);
        datapath
            .maps
            .upsert_ipcache(ipnet::Ipv4Net::from(ip), entry)
            .expect("writing the ipcache");
    }
    let size = format!("ipcache of {NODES} node CIDRs + {ENDPOINTS} endpoints");
    let (exported, _) = endpoint_ip(ENDPOINTS / 2);
    let (network, _) = node_net(NODES - 1);
    let not_exported = Ipv4Addr::from(u32::from(network) + 30);
    for (name, dst) in [
        (format!("from-pod: other cluster (VXLAN), {size}"), exported),
        (
            format!("from-pod: other cluster (VXLAN), to a pod not exported, {size}"),
            not_exported,
        ),
    ] {
        let packet = tcp(40000, dst, 80, TCP_SYN);
        let ns = testrun::ns_per_packet(&mut datapath, PROG_FROM_POD, &packet, REPEAT, calls());
        show(&name, ns, (small, "from-pod: other cluster (VXLAN)"));
    }
}

/// Flow events for forwarded packets, at the default rate and for every
/// packet, against none.
fn sampling(datapath: &mut Datapath) {
    let packet = tcp(40000, POD_OTHER_CLUSTER, 80, TCP_SYN);
    println!();
    println!(
        "flow events (from-pod, other cluster), median of {} calls x {REPEAT} repeats",
        calls()
    );
    println!("{:<54} {:>10} {:>10}", "case", "ns/packet", "vs none");
    let mut none = None;
    for (name, one_in) in [
        ("no forwarded events", 0u16),
        ("one in 100 forwarded packets (the default)", 100),
        ("every forwarded packet", 1),
    ] {
        let mut config = datapath.maps.node_config().unwrap();
        config.forward_sample = one_in;
        datapath.maps.set_node_config(config).unwrap();
        // The ring is emptied between calls, as the agent would, so every
        // sampled event is really written.
        let mut samples: Vec<f64> = (0..calls())
            .map(|_| {
                let ns = testrun::ns_per_packet(datapath, PROG_FROM_POD, &packet, REPEAT, 1);
                datapath.maps.drain_events();
                ns
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let ns = samples[samples.len() / 2];
        let none = *none.get_or_insert(ns);
        show(
            &format!("flow events: {name}"),
            ns,
            (none, "flow events: no forwarded events"),
        );
    }
    let mut config = datapath.maps.node_config().unwrap();
    config.forward_sample = 0;
    datapath.maps.set_node_config(config).unwrap();
}

/// Pod A's egress under policy, among 1,000 other entries: the cost of the
/// lookups against the same packet without policy.
fn policy(datapath: &mut Datapath) {
    let to_other_cluster = |port| tcp(40000, POD_OTHER_CLUSTER, port, TCP_SYN);
    println!();
    println!(
        "policy (pod A's egress), {} packets per case",
        calls() as u32 * REPEAT
    );
    println!("{:<54} {:>10} {:>10}", "case", "ns/packet", "vs none");
    let none = testrun::ns_per_packet(
        datapath,
        PROG_FROM_POD,
        &to_other_cluster(80),
        REPEAT,
        calls(),
    );
    let baseline = "from-pod: other cluster, no policy";
    show(baseline, none, (none, baseline));

    let allow = |datapath: &mut Datapath, identity: u32, port: u16| {
        let key = PolicyKey {
            policy_id: 1,
            direction: Direction::Egress as u8,
            identity: identity.to_be_bytes(),
            protocol: PROTO_TCP,
            port: port.to_be_bytes(),
            ..PolicyKey::default()
        };
        datapath
            .maps
            .upsert_policy(key, PolicyKey::FULL_BITS)
            .unwrap();
    };
    for index in 0..1_000 {
        allow(datapath, identity::make(OTHER_CLUSTER, 1_000 + index), 80);
    }
    // POD_OTHER_CLUSTER resolves to its node's pod CIDR: UNMANAGED.
    allow(datapath, identity::UNMANAGED, 80);
    allow(datapath, PolicyKey::ANY_IDENTITY, 443);
    let mut info = datapath.maps.endpoints().unwrap()[&POD_A.octets()];
    info.flags = EndpointInfo::EGRESS_ENFORCED;
    datapath.maps.upsert_endpoint(POD_A.octets(), info).unwrap();
    for (name, port) in [
        ("from-pod: allowed by an identity entry (1 lookup)", 80),
        (
            "from-pod: allowed by an any-identity entry (2 lookups)",
            443,
        ),
        ("from-pod: denied (2 lookups, counted, event)", 8443),
    ] {
        let ns = testrun::ns_per_packet(
            datapath,
            PROG_FROM_POD,
            &to_other_cluster(port),
            REPEAT,
            calls(),
        );
        show(name, ns, (none, baseline));
    }
}
