//! Throughput and request/response rates from a pod in c1 to a pod in c2
//! (another node), side by side in one run, for:
//!
//! - fleetnet, to the server pod's IP, and to a global Service whose one
//!   backend is that pod (DNAT in from-pod, reverse NAT on the way back);
//! - fleetnet with pods at MTU 1500 on the 1500-byte underlay (TCP's MSS
//!   clamped to the tunnel's path MTU), to the pod IP, and the IP
//!   fragments its nodes made;
//! - a plain kernel VXLAN overlay built like Flannel's, no BPF (pod IP);
//! - that overlay plus kube-proxy's iptables rules (Service VIP);
//! - on a routed underlay (a router holding each node's pod CIDR), fleetnet
//!   routing natively, unencapsulated, and plain kernel routing with no
//!   BPF, both with pods at the underlay's MTU (1500), to the pod IP.
//!
//! Each network is its own fleet in a box (`fleetnet_testing::side_by_side`), all
//! up at once, so runs alternate between them: 3 rounds, the median of
//! each. Quick mode: 1 round of 1 s.
//!
//! The request/response runs to fleetnet's pod IP also give the programs'
//! run time per packet on live traffic (BPF_ENABLE_STATS): from-pod and
//! from-overlay tunnelled, from-pod and from-underlay routed natively,
//! which BPF_PROG_TEST_RUN cannot give: from-overlay needs tunnel metadata,
//! and routing needs the kernel's FIB and neighbours.

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use fleetnet_benches::{self as bench, Figure};
use fleetnet_testing::{
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, SERVICE_PORT},
    iperf,
    rr::{self, Connection, Rate},
    side_by_side::{self, CLIENT, SERVER, VIP, alternate, median},
};

const THROUGHPUT: &str = "Throughput, pod in c1 -> pod in c2 (iperf3 TCP; VXLAN with pods at \
                          MTU 1450 unless said, routed with pods at 1500)";
const REQUESTS: &str = "Request/response, pod in c1 -> pod in c2 (1 byte each way)";
const LIVE: &str = "Per-packet cost on live traffic (BPF_ENABLE_STATS run time / run count, \
                    request/response to the pod IP)";

/// One way of reaching the server: which network, which address.
struct Case<'a> {
    name: &'static str,
    fleet: &'a FleetInABox,
    to: SocketAddrV4,
    /// The cases its figures are compared with (same run): the first in
    /// its own figure, each other in one of its own.
    versus: &'static [&'static str],
}

const FLEETNET_POD: &str = "fleetnet, pod IP";
const FLEETNET_VIP: &str = "fleetnet, service VIP";
const FLEETNET_MTU_1500: &str = "fleetnet, pod IP, pods at MTU 1500";
const PLAIN_POD: &str = "plain VXLAN, pod IP";
const KUBE_PROXY_VIP: &str = "kube-proxy iptables, service VIP";
const NATIVE_POD: &str = "fleetnet native routing, pod IP";
const PLAIN_ROUTED: &str = "plain kernel routing, pod IP";

fn main() {
    fleetnet_testing::require_root();
    let seconds = bench::size(5, 1);
    let rounds = bench::size(3, 1);
    let fleetnet = side_by_side::fleetnet(FleetSpec::new(2, 1, 2));
    let fleetnet_1500 = side_by_side::fleetnet(FleetSpec {
        pod_mtu: 1500,
        ..FleetSpec::new(2, 1, 2)
    });
    let plain = side_by_side::plain_vxlan();
    let kube_proxy = side_by_side::kube_proxy();
    let native = side_by_side::fleetnet(FleetSpec {
        pod_mtu: 1500,
        ..FleetSpec::new(2, 1, 2).native()
    });
    let routed = side_by_side::plain_routing();
    let server_ip = fleetnet.pod(SERVER).ip;
    let cases = [
        Case {
            name: FLEETNET_POD,
            fleet: &fleetnet,
            to: SocketAddrV4::new(server_ip, BACKEND_PORT),
            versus: &[PLAIN_POD],
        },
        Case {
            name: FLEETNET_VIP,
            fleet: &fleetnet,
            to: SocketAddrV4::new(VIP, SERVICE_PORT),
            versus: &[FLEETNET_POD],
        },
        Case {
            name: FLEETNET_MTU_1500,
            fleet: &fleetnet_1500,
            to: SocketAddrV4::new(server_ip, BACKEND_PORT),
            versus: &[FLEETNET_POD],
        },
        Case {
            name: PLAIN_POD,
            fleet: &plain,
            to: SocketAddrV4::new(server_ip, BACKEND_PORT),
            versus: &[],
        },
        Case {
            name: KUBE_PROXY_VIP,
            fleet: &kube_proxy,
            to: SocketAddrV4::new(VIP, SERVICE_PORT),
            versus: &[PLAIN_POD],
        },
        Case {
            name: NATIVE_POD,
            fleet: &native,
            to: SocketAddrV4::new(server_ip, BACKEND_PORT),
            versus: &[PLAIN_ROUTED, FLEETNET_POD],
        },
        Case {
            name: PLAIN_ROUTED,
            fleet: &routed,
            to: SocketAddrV4::new(server_ip, BACKEND_PORT),
            versus: &[],
        },
    ];
    let networks = [
        &fleetnet,
        &fleetnet_1500,
        &plain,
        &kube_proxy,
        &native,
        &routed,
    ];
    let iperf: Vec<iperf::Server> = networks
        .iter()
        .map(|fleet| {
            iperf::Server::start(fleet.pod(SERVER), BACKEND_PORT)
                .expect("iperf3 (cargo xtask setup installs it)")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fragments_before = [fragments(&fleetnet_1500), fragments(&native)];
    for streams in [1, 4] {
        let runs = alternate(&cases, rounds, |case| {
            iperf::run(case.fleet.pod(CLIENT), case.to, streams, seconds)
                .expect("iperf3")
                .gbits
        });
        record(
            THROUGHPUT,
            &cases,
            &runs,
            &format!("{streams} stream(s)"),
            "Gbit/s",
        );
    }
    drop(iperf);
    for (fleet, name, before) in [
        (&fleetnet_1500, FLEETNET_MTU_1500, fragments_before[0]),
        (&native, NATIVE_POD, fragments_before[1]),
    ] {
        Figure::new(
            THROUGHPUT,
            &format!("{name}, IP fragments made on the underlay"),
            (fragments(fleet) - before) as f64,
            "fragments",
        )
        .record();
    }

    let echo: Vec<rr::Server> = networks
        .iter()
        .map(|fleet| {
            rr::Server::start(&fleet.pod(SERVER).netns, BACKEND_PORT).expect("the echo server")
        })
        .collect();
    let stats = bench::enable_run_stats().expect("program run statistics");
    let mut live = Live::default();
    let duration = Duration::from_secs(seconds.into());
    let rates = alternate(&cases, rounds, |case| {
        let before = live.read(case);
        let rate = rr::transactions(
            &case.fleet.pod(CLIENT).netns,
            case.to,
            Connection::Persistent,
            duration,
        )
        .expect("request/response");
        live.add(case, before);
        rate
    });
    drop(stats);
    let field = |pick: fn(&Rate) -> f64| -> Vec<Vec<f64>> {
        rates
            .iter()
            .map(|runs| runs.iter().map(pick).collect())
            .collect()
    };
    record(
        REQUESTS,
        &cases,
        &field(|r| r.per_second),
        "persistent connection",
        "transactions/s",
    );
    record(
        REQUESTS,
        &cases,
        &field(|r| r.p99_micros),
        "persistent connection, p99",
        "µs",
    );
    let connects = alternate(&cases, rounds, |case| {
        rr::transactions(
            &case.fleet.pod(CLIENT).netns,
            case.to,
            Connection::PerRequest,
            duration,
        )
        .expect("connect-per-request")
    });
    let connect_rates: Vec<Vec<f64>> = connects
        .iter()
        .map(|runs| runs.iter().map(|r| r.per_second).collect())
        .collect();
    record(
        REQUESTS,
        &cases,
        &connect_rates,
        "connection per request",
        "transactions/s",
    );
    for (case, runs) in cases.iter().zip(&connects) {
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        Figure::new(
            REQUESTS,
            &format!(
                "{}, connection per request, failed (2 s timeout)",
                case.name
            ),
            failed as f64,
            "transactions",
        )
        .record();
    }
    drop(echo);
    live.record();

    for fleet in [&fleetnet, &fleetnet_1500, &native] {
        fleet.stop_agents().expect("stopping the agents");
    }
}

/// IP fragments the underlay's hosts have made (FragCreates): every node,
/// and the router of a routed underlay.
fn fragments(fleet: &FleetInABox) -> u64 {
    fleet
        .nodes
        .iter()
        .map(|node| &node.netns)
        .chain(fleet.router())
        .map(|netns| netns.ip_counters().expect("IP counters")["FragCreates"])
        .sum()
}

/// Records each case's median as `<case>, <what>`, with its ratio to the
/// case it is compared with.
fn record(group: &str, cases: &[Case], runs: &[Vec<f64>], what: &str, unit: &str) {
    let medians: Vec<f64> = runs.iter().map(|runs| median(runs)).collect();
    for (case, value) in cases.iter().zip(&medians) {
        println!("{group}: {}, {what}: {value:.2} {unit}", case.name);
        let name = format!("{}, {what}", case.name);
        let of = |versus: &str| {
            let index = cases
                .iter()
                .position(|other| other.name == versus)
                .expect("compared with a case of the same run");
            (medians[index], format!("{versus}, {what}"))
        };
        let mut figure = Figure::new(group, &name, *value, unit);
        if let Some(versus) = case.versus.first() {
            let (baseline, baseline_name) = of(versus);
            figure = figure.versus(baseline, &baseline_name);
        }
        figure.record();
        for versus in case.versus.iter().skip(1) {
            let (baseline, baseline_name) = of(versus);
            Figure::new(group, &format!("{name}, vs {versus}"), *value, unit)
                .versus(baseline, &baseline_name)
                .record();
        }
    }
}

/// Run time and count of fleetnet's programs on the request/response
/// runs to the pod IP, tunnelled and routed natively.
#[derive(Default)]
struct Live {
    /// By (case, program): nanoseconds, runs.
    runs: BTreeMap<(&'static str, &'static str), (u64, u64)>,
}

/// The programs each measured case runs, sender's then receiver's.
fn live_programs(case: &str) -> Option<[&'static str; 2]> {
    match case {
        FLEETNET_POD => Some(["from_pod", "from_overlay"]),
        NATIVE_POD => Some(["from_pod", "from_underlay"]),
        _ => None,
    }
}

type Runs = Vec<(&'static str, (u64, u64))>;

impl Live {
    fn read(&self, case: &Case) -> Option<Runs> {
        let programs = live_programs(case.name)?;
        Some(
            programs
                .iter()
                .map(|name| {
                    let runs = bench::program_runs(name).expect("reading program statistics");
                    (*name, runs)
                })
                .collect(),
        )
    }

    fn add(&mut self, case: &Case, before: Option<Runs>) {
        let (Some(before), Some(now)) = (before, self.read(case)) else {
            return;
        };
        for ((program, then), (_, now)) in before.into_iter().zip(now) {
            let total = self.runs.entry((case.name, program)).or_default();
            total.0 += now.0 - then.0;
            total.1 += now.1 - then.1;
        }
    }

    fn record(&self) {
        let per_packet = |case: &'static str, program: &'static str| {
            let (nanos, count) = self.runs.get(&(case, program)).copied().unwrap_or_default();
            assert!(
                count > 0,
                "{program} never ran on the live traffic of {case}"
            );
            nanos as f64 / count as f64
        };
        let from_pod = per_packet(FLEETNET_POD, "from_pod");
        let from_overlay = per_packet(FLEETNET_POD, "from_overlay");
        let native_from_pod = per_packet(NATIVE_POD, "from_pod");
        let from_underlay = per_packet(NATIVE_POD, "from_underlay");
        println!(
            "live: from-pod {from_pod:.0} ns, from-overlay {from_overlay:.0} ns per packet; \
             natively from-pod {native_from_pod:.0} ns, from-underlay {from_underlay:.0} ns"
        );
        let pod_name = "from-pod (pod -> VXLAN)";
        Figure::new(LIVE, pod_name, from_pod, "ns/packet").record();
        Figure::new(
            LIVE,
            "from-overlay (VXLAN -> pod)",
            from_overlay,
            "ns/packet",
        )
        .versus(from_pod, pod_name)
        .record();
        Figure::new(
            LIVE,
            "from-pod (pod -> underlay, native)",
            native_from_pod,
            "ns/packet",
        )
        .versus(from_pod, pod_name)
        .record();
        Figure::new(
            LIVE,
            "from-underlay (underlay -> pod, native; every packet the uplink receives)",
            from_underlay,
            "ns/packet",
        )
        .versus(from_overlay, "from-overlay (VXLAN -> pod)")
        .record();
    }
}
