//! Wall-clock times as Unix seconds, as documents, reports and metrics
//! carry them; and the monotonic clock the datapath stamps with.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` in seconds since the Unix epoch (0 before it).
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    unix_seconds(SystemTime::now())
}

/// CLOCK_MONOTONIC in ns, the clock of the datapath's `bpf_ktime_get_ns`
/// (conntrack expiry, flow event times).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the timespec is valid for writing.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
