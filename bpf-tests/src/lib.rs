//! Kernel-level tests for fleetnet and the fleet-in-a-box topology that
//! the tests, `cargo xtask demo` and `cargo xtask bench` share.
//!
//! Everything here needs root: BPF_PROG_TEST_RUN, network namespaces,
//! attaching programs. Tests call [`require_root`] first so that without
//! privileges they fail with the reason instead of passing vacuously.

pub mod baseline;
pub mod bench;
pub mod capture;
pub mod demo;
pub mod etcd;
pub mod fleet;
pub mod kube_api;
pub mod netns;
pub mod packet;
pub mod probe;
pub mod prometheus;
pub mod rollout;
pub mod rr;
pub mod scenario;
pub mod side_by_side;
pub mod testrun;

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

/// Polls `condition` every 50 ms until it holds, failing the test with
/// `what` after `timeout`; returns how long it took.
pub fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    condition: impl Fn() -> bool,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < timeout, "timed out waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    started.elapsed()
}
