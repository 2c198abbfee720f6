//! The clock the datapath stamps with: `bpf_ktime_get_ns` reads
//! CLOCK_MONOTONIC (conntrack expiry, flow event times).

/// CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the timespec is valid for writing.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
