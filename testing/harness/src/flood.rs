//! Losses on established flows, as the restart and upgrade tests count
//! them: `ping` floods between pods (sent, answered), and TCP's
//! retransmission counter of a pod's namespace.

use std::{
    io::Read,
    net::Ipv4Addr,
    process::{Child, Stdio},
};

use nix::{sys::signal, unistd::Pid};

use crate::netns::Netns;

/// A `ping` running from a pod until [`Pinger::finish`].
pub struct Pinger(Child);

impl Pinger {
    /// Pings `to` from `netns` every `interval_seconds`, `count` times
    /// (none: until finished).
    pub fn start(netns: &Netns, to: Ipv4Addr, interval_seconds: f64, count: Option<u32>) -> Self {
        let mut command = netns.command("ping").expect("entering the pod");
        command
            .args(["-q", "-n", "-i", &interval_seconds.to_string(), "-W", "2"])
            .args(count.map(|n| format!("-c{n}")))
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Self(command.spawn().expect("running ping"))
    }

    /// Stops it (SIGINT: it still waits for the replies due) unless it
    /// ran its count; (sent, answered).
    pub fn finish(mut self, interrupt: bool) -> (u32, u32) {
        if interrupt {
            let _ = signal::kill(Pid::from_raw(self.0.id() as i32), signal::Signal::SIGINT);
        }
        let mut text = String::new();
        let mut stdout = self.0.stdout.take().expect("ping's output");
        stdout
            .read_to_string(&mut text)
            .expect("reading ping's output");
        let _ = self.0.wait();
        let summary = text
            .lines()
            .find(|line| line.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"));
        let number = |what: &str| -> u32 {
            summary
                .split(',')
                .find(|part| part.contains(what))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no '{what}' in {summary}"))
        };
        (number("transmitted"), number("received"))
    }
}

/// TCP's RetransSegs counter of the namespace.
pub fn retransmitted_segments(netns: &Netns) -> u64 {
    // /proc/thread-self: the namespace the thread entered, not the process's.
    let snmp = netns
        .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .expect("entering the namespace")
        .expect("reading /proc/net/snmp");
    let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|name| name == "RetransSegs")
        .expect("a RetransSegs column");
    values
        .split_whitespace()
        .nth(column)
        .and_then(|n| n.parse().ok())
        .expect("a RetransSegs value")
}
