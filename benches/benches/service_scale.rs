//! Connect-per-request rate to one Service while 1, 1,000 and 10,000
//! Services are installed: fleetnet (a hash lookup and a Maglev slot per
//! new connection, whatever the count) against kube-proxy's iptables
//! chains, which every new connection walks one rule per Service at a time
//! until its own matches.
//!
//! The other Services each have one backend, as the measured one does.
//! In the iptables baseline the measured Service sits in the middle of
//! KUBE-SERVICES: kube-proxy orders services by hash, so that is where a
//! Service is on average. Runs alternate between the two networks, 5
//! rounds of 3 s, median. Quick mode: 1, 10 and 100 Services, 1 round of 1 s.

use std::{
    fmt::Write,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use fleetnet_benches::{self as bench, Figure};
use fleetnet_testing::{
    baseline::ClusterIpService,
    fleet_in_a_box::{self, BACKEND_PORT, FleetInABox, FleetSpec, SERVICE_PORT},
    rr::{self, Connection},
    side_by_side::{self, CLIENT, SERVER, alternate, median},
};

const GROUP: &str = "Service scale: connections per second to one Service, pod in c1 -> pod in c2 \
                     (1 byte each way, a new connection per request)";
const INSTALL: &str = "Service scale: time to install every Service (fleetnet: manifest written \
                       -> node's datapath holds all; kube-proxy: iptables-restore on each node)";
const FLEETNET: &str = "fleetnet";
const KUBE_PROXY: &str = "kube-proxy iptables";
/// The local pod every other Service of fleetnet's c1 sends to.
const FILLER_BACKEND: &str = "c1/n1/p2";

fn main() {
    fleetnet_testing::require_root();
    let counts = bench::size([1, 1_000, 10_000], [1, 10, 100]);
    let duration = Duration::from_secs(bench::size(3, 1));
    let rounds = bench::size(5, 1);
    let fleetnet = side_by_side::fleetnet(FleetSpec {
        max_services: counts[2] + 64,
        ..FleetSpec::new(2, 1, 2)
    });
    let kube_proxy = side_by_side::plain_vxlan();
    let servers: Vec<rr::Server> = [&fleetnet, &kube_proxy]
        .iter()
        .map(|fleet| {
            rr::Server::start(&fleet.pod(SERVER).netns, BACKEND_PORT).expect("the echo server")
        })
        .collect();

    let cases = [(FLEETNET, &fleetnet), (KUBE_PROXY, &kube_proxy)];
    let connect_rate = |(_, fleet): &(&str, &FleetInABox), duration| {
        rr::transactions(
            &fleet.pod(CLIENT).netns,
            SocketAddrV4::new(side_by_side::VIP, SERVICE_PORT),
            Connection::PerRequest,
            duration,
        )
        .expect("connect-per-request")
        .per_second
    };
    let mut at_one = [0.0; 2];
    for count in counts {
        let installed = [
            install_fleetnet(&fleetnet, count),
            install_kube_proxy(&kube_proxy, count),
        ];
        if count == 1 {
            // Warm caches and the servers before the first measured run.
            alternate(&cases, 1, |case| connect_rate(case, Duration::from_secs(1)));
        }
        let runs = alternate(&cases, rounds, |case| connect_rate(case, duration));
        let rates = [median(&runs[0]), median(&runs[1])];
        if count == 1 {
            at_one = rates;
        }
        for (((name, _), took), (rate, one)) in
            cases.iter().zip(installed).zip(rates.iter().zip(at_one))
        {
            println!("{name}, {count} services: {rate:.0} connections/s");
            Figure::new(
                GROUP,
                &format!("{name}, {count} services"),
                *rate,
                "connections/s",
            )
            .versus(one, &format!("{name}, 1 services"))
            .record();
            Figure::new(
                INSTALL,
                &format!("{name}, {count} services"),
                took.as_secs_f64() * 1e3,
                "ms",
            )
            .record();
        }
        Figure::new(
            GROUP,
            &format!("fleetnet over kube-proxy iptables, {count} services"),
            rates[0] / rates[1],
            "x",
        )
        .record();
    }
    drop(servers);
    fleetnet.stop_agents().expect("stopping the agents");
}

/// The VIP of the `index`th other Service.
fn filler_vip(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(172, 21, (index / 250) as u8, (index % 250 + 1) as u8)
}

/// Gives fleetnet's c1 `count` Services in all (`perf` and `count - 1`
/// others, each with one ready backend) and waits until its node's
/// datapath holds them; returns how long that took.
fn install_fleetnet(fleet: &FleetInABox, count: u32) -> Duration {
    let backend = fleet.pod(FILLER_BACKEND).ip;
    let mut yaml = String::new();
    for index in 0..count - 1 {
        let (name, vip) = (format!("filler-{index}"), filler_vip(index));
        let _ = write!(
            yaml,
            "---\n{}---\n{}",
            fleet_in_a_box::service_yaml(&name, vip, &[]),
            fleet_in_a_box::endpoint_slice_yaml(&name, &[(backend, "n1", true)])
        );
    }
    fleet
        .write_manifest(1, "fillers.yaml", &yaml)
        .expect("the other services");
    let node = fleet.node("c1/n1");
    let took = fleetnet_testing::wait_for(
        &format!("c1/n1 programs {count} services"),
        Duration::from_secs(300),
        || node.metric("fleetnet_services").ok().flatten() == Some(f64::from(count)),
    );
    println!(
        "fleetnet: {count} services programmed {:.2} s after the manifest was written",
        took.as_secs_f64()
    );
    took
}

/// Loads kube-proxy's rules for `count` Services, `perf` in the middle, on
/// every node; returns how long that took.
fn install_kube_proxy(fleet: &FleetInABox, count: u32) -> Duration {
    let backend = SocketAddrV4::new(fleet.pod(FILLER_BACKEND).ip, BACKEND_PORT);
    let mut services: Vec<ClusterIpService> = (0..count - 1)
        .map(|index| ClusterIpService {
            vip: filler_vip(index),
            port: SERVICE_PORT,
            backends: vec![backend],
        })
        .collect();
    services.insert(services.len() / 2, side_by_side::perf_service(fleet));
    let started = Instant::now();
    side_by_side::install_kube_proxy(fleet, &services);
    started.elapsed()
}
