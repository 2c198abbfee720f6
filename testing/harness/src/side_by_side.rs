//! The networks the benchmarks compare, each its own fleet in a box of 2
//! clusters x 1 node x 2 pods, all up at once so that runs can alternate
//! between them (the machine's noise then hits each alike):
//!
//! - [`fleetnet`]: the agents running, Service `perf` global with its one
//!   backend, the server pod, in c2;
//! - [`plain_vxlan`]: no agent, a Flannel-style kernel VXLAN overlay;
//! - [`kube_proxy`]: that overlay plus kube-proxy's iptables rules;
//! - [`plain_routing`]: no agent, a routed underlay (a router holding each
//!   node's pod CIDR) and the kernel routing pods' packets, no BPF.
//!
//! The client is pod `c1/n1/p1`, the server pod `c2/n1/p2`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use crate::{
    baseline::{self, ClusterIpService},
    fleet_in_a_box::{BACKEND_PORT, FleetInABox, FleetSpec, SERVICE_PORT},
};

pub const CLIENT: &str = "c1/n1/p1";
pub const SERVER: &str = "c2/n1/p2";
/// ClusterIP of Service `perf` in c1 (fleetnet) and in the kube-proxy
/// network.
pub const VIP: Ipv4Addr = Ipv4Addr::new(172, 20, 1, 50);

/// fleetnet with the agents' defaults (`spec` may raise limits), serving
/// the global Service from c2 at [`VIP`] in c1.
pub fn fleetnet(spec: FleetSpec) -> FleetInABox {
    let fleet = FleetInABox::build(FleetSpec {
        forward_sample: 100,
        ..spec
    })
    .expect("building the fleet");
    fleet.start_agents().expect("starting the agents");
    serve_perf(&fleet);
    prepare_client(&fleet);
    fleet
}

/// Waits for the fleet's agents to converge, then serves the global
/// Service `perf` from c2 at [`VIP`] in c1.
pub fn serve_perf(fleet: &FleetInABox) {
    fleet
        .wait_converged(Duration::from_secs(30))
        .expect("the mesh converges");
    let global = [("service.cilium.io/global", "true")];
    fleet
        .write_service(1, "perf", VIP, &global)
        .expect("service in c1");
    fleet
        .write_service(2, "perf", Ipv4Addr::new(172, 20, 2, 50), &global)
        .expect("service in c2");
    fleet
        .write_endpoints(2, "perf", &[(SERVER, true)])
        .expect("its backend");
    let node = fleet.node("c1/n1");
    crate::wait_for("c1 serves the VIP", Duration::from_secs(15), || {
        node.backend_count(VIP) == Some(1)
    });
}

/// The same topology with no agent and a Flannel-style VXLAN overlay.
pub fn plain_vxlan() -> FleetInABox {
    let fleet = FleetInABox::build(FleetSpec::new(2, 1, 2)).expect("building the fleet");
    baseline::flannel(&fleet).expect("the VXLAN overlay");
    prepare_client(&fleet);
    fleet
}

/// The same topology on a routed underlay with no agent: the kernel routes
/// pods' packets through the router, unencapsulated, pods at the
/// underlay's MTU.
pub fn plain_routing() -> FleetInABox {
    let fleet = FleetInABox::build(FleetSpec {
        pod_mtu: 1500,
        routed_underlay: true,
        ..FleetSpec::new(2, 1, 2)
    })
    .expect("building the fleet");
    prepare_client(&fleet);
    fleet
}

/// [`plain_vxlan`] plus kube-proxy's rules for Service `perf` on every node.
pub fn kube_proxy() -> FleetInABox {
    let fleet = plain_vxlan();
    install_kube_proxy(&fleet, &[perf_service(&fleet)]);
    fleet
}

/// Service `perf` as kube-proxy sees it.
pub fn perf_service(fleet: &FleetInABox) -> ClusterIpService {
    ClusterIpService {
        vip: VIP,
        port: SERVICE_PORT,
        backends: vec![SocketAddrV4::new(fleet.pod(SERVER).ip, BACKEND_PORT)],
    }
}

/// Loads kube-proxy's rules for `services` on every node, as its sync does.
pub fn install_kube_proxy(fleet: &FleetInABox, services: &[ClusterIpService]) {
    let rules = baseline::kube_proxy_rules(services);
    for node in &fleet.nodes {
        baseline::load_iptables(node, &rules).expect("kube-proxy's rules");
    }
}

/// Connect-per-request runs need more ports than the default range.
fn prepare_client(fleet: &FleetInABox) {
    fleet
        .pod(CLIENT)
        .netns
        .sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        .expect("the client's port range");
}

/// Runs `measure` on every case in turn, `rounds` times, and returns each
/// case's runs.
pub fn alternate<C, T>(cases: &[C], rounds: u32, mut measure: impl FnMut(&C) -> T) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (case, runs) in cases.iter().zip(&mut runs) {
            runs.push(measure(case));
        }
    }
    runs
}

pub fn median(runs: &[f64]) -> f64 {
    let mut runs = runs.to_vec();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}
