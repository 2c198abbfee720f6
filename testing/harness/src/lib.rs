//! fleetnet's test harness: what the packet, end-to-end, control-plane
//! and manifest tests, the benchmarks and the demo share.
//!
//! - processes and places: network namespaces ([`netns`]), a real etcd
//!   ([`etcd`]), a real Prometheus ([`prometheus`]), an HTTP server that
//!   speaks the Kubernetes API's list and watch wire format ([`kube_api`]),
//!   fleet controllers ([`controllers`]);
//! - packets: frames built byte by byte ([`packet`]), run through the
//!   programs with BPF_PROG_TEST_RUN ([`testrun`], [`scenario`]), captured
//!   on the wire ([`capture`]), traffic between pods ([`probe`], [`rr`]);
//! - the fleet in a box ([`fleet_in_a_box`]): clusters of nodes of pods in
//!   namespaces, one real agent per node; and the plain-kernel baselines
//!   it is measured against ([`baseline`], [`side_by_side`]).
//!
//! Most of it needs root: BPF_PROG_TEST_RUN, network namespaces,
//! attaching programs. Tests call [`require_root`] first so that without
//! privileges they fail with the reason instead of passing vacuously.

pub mod baseline;
pub mod browser;
pub mod capture;
pub mod controllers;
pub mod dashboard_render;
pub mod etcd;
pub mod etcd_proxy;
pub mod fleet_in_a_box;
pub mod flood;
pub mod http;
pub mod iperf;
pub mod kube_api;
pub mod netns;
pub mod packet;
pub mod probe;
pub mod prometheus;
pub mod relay;
pub mod rr;
pub mod scenario;
pub mod side_by_side;
pub mod testrun;

use std::time::{Duration, Instant};

/// Fails the calling test, with the reason, unless running as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (BPF_PROG_TEST_RUN, network namespaces, attaching programs); \
         run `cargo xtask test` as root"
    );
}

/// Resident memory of process `pid` in KiB (VmRSS), if it is running.
pub fn resident_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// How often a wait looks again, unless it says otherwise.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Asks `check` every `every` until it has an answer or `timeout` has
/// passed: the answer and how long it took, or `None`.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let answer: Result<_, std::convert::Infallible> = try_poll(timeout, every, || Ok(check()));
    answer.unwrap_or_else(|never| match never {})
}

/// [`poll`] with a `check` that may fail, which ends the wait with its
/// error (an agent that exited will never be ready).
pub fn try_poll<T, E>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<(T, Duration)>, E> {
    let started = Instant::now();
    loop {
        if let Some(answer) = check()? {
            return Ok(Some((answer, started.elapsed())));
        }
        if started.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// Polls `condition` every [`POLL_EVERY`] until it holds, failing the test
/// with `what` after `timeout`; returns how long it took.
pub fn wait_for(what: &str, timeout: Duration, condition: impl Fn() -> bool) -> Duration {
    match poll(timeout, POLL_EVERY, || condition().then_some(())) {
        Some(((), took)) => took,
        None => panic!("timed out waiting: {what}"),
    }
}

/// Writes a line to stderr right away (progress in long tests and the demo).
pub fn progress(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
