//! Throughput between pods of two clusters through the datapath, iperf3
//! TCP, one stream and four: to the server pod's IP, and to a global
//! Service whose one backend is that pod (DNAT in from-pod, reverse NAT on
//! the way back), side by side in the same run.
//!
//! Each case runs 3 times, alternating, and reports the median. Quick
//! mode: once, 1 s instead of 5.

use std::{net::Ipv4Addr, process::Stdio, time::Duration};

use bpf_tests::{
    bench::{self, Figure},
    fleet::{BACKEND_PORT, Fleet, FleetSpec, Pod, SERVICE_PORT},
};

const GROUP: &str = "Throughput, pod in c1 -> pod in c2 (iperf3 TCP, VXLAN, MTU 1450)";
const CLIENT: &str = "c1/n1/p1";
const SERVER: &str = "c2/n1/p2";
const VIP: Ipv4Addr = Ipv4Addr::new(172, 20, 1, 50);

fn main() {
    bpf_tests::require_root();
    let seconds = bench::size(5, 1);
    let fleet = Fleet::build(FleetSpec::new(2, 1, 2)).expect("building the fleet");
    fleet.start_agents().expect("starting the agents");
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
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while node.backend_count(VIP) != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "c1 never served the VIP"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let server = fleet.pod(SERVER);
    let mut iperf = server
        .netns
        .command("iperf3")
        .expect("the server's namespace")
        .args(["-s", "-p", &BACKEND_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (cargo xtask setup installs it)");
    std::thread::sleep(Duration::from_millis(500));
    let client = fleet.pod(CLIENT);
    // Alternating runs, median of each: the machine's noise hits both.
    let median = |mut runs: Vec<f64>| {
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    for streams in [1, 4] {
        let (mut pod_runs, mut vip_runs) = (Vec::new(), Vec::new());
        for _ in 0..bench::size(3, 1) {
            pod_runs.push(gbits(client, server.ip, BACKEND_PORT, streams, seconds));
            vip_runs.push(gbits(client, VIP, SERVICE_PORT, streams, seconds));
        }
        let (pod_ip, vip) = (median(pod_runs), median(vip_runs));
        println!(
            "{streams} stream(s): pod IP {pod_ip:.2} Gbit/s, service VIP {vip:.2} Gbit/s ({:.0}%)",
            100.0 * vip / pod_ip
        );
        let pod_name = format!("pod IP, {streams} stream(s)");
        Figure::new(GROUP, &pod_name, pod_ip, "Gbit/s").record();
        Figure::new(
            GROUP,
            &format!("service VIP, {streams} stream(s)"),
            vip,
            "Gbit/s",
        )
        .versus(pod_ip, &pod_name)
        .record();
    }
    let _ = iperf.kill();
    let _ = iperf.wait();
    fleet.stop_agents().expect("stopping the agents");
}

/// Received throughput of `streams` TCP streams for `seconds`, in Gbit/s.
fn gbits(client: &Pod, to: Ipv4Addr, port: u16, streams: u32, seconds: u32) -> f64 {
    let output = client
        .netns
        .command("iperf3")
        .expect("the client's namespace")
        .args(["-c", &to.to_string(), "-p", &port.to_string(), "-J"])
        .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
        .output()
        .expect("running iperf3");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("iperf3's JSON report");
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 to {to}:{port} reported no throughput: {report}"));
    bits / 1e9
}
