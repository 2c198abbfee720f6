//! Bulk TCP throughput between two pods with iperf3 (installed by `cargo
//! xtask setup`), for the benchmarks and the tests that need a full-size
//! transfer.

use std::{
    io,
    net::SocketAddrV4,
    process::{Child, Stdio},
};

use crate::fleet_in_a_box::Pod;

/// An iperf3 server in `pod` on `port`; killed when dropped.
pub struct Server(Child);

impl Server {
    pub fn start(pod: &Pod, port: u16) -> io::Result<Self> {
        let child = pod
            .netns
            .command("iperf3")?
            .args(["-s", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one iperf3 run measured.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Received throughput, Gbit/s.
    pub gbits: f64,
    /// TCP segments the sender retransmitted.
    pub retransmits: u64,
}

/// `streams` TCP streams from `client` to `to` for `seconds`.
pub fn run(client: &Pod, to: SocketAddrV4, streams: u32, seconds: u32) -> io::Result<Run> {
    let output = client
        .netns
        .command("iperf3")?
        .args([
            "-c",
            &to.ip().to_string(),
            "-p",
            &to.port().to_string(),
            "-J",
        ])
        .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|error| io::Error::other(format!("iperf3's JSON report: {error}")))?;
    let end = &report["end"];
    let bits = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| {
            io::Error::other(format!("iperf3 to {to} reported no throughput: {report}"))
        })?;
    Ok(Run {
        gbits: bits / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}
