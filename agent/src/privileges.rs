//! Checks the capabilities the agent needs before it touches the kernel, so
//! a missing privilege is one clear sentence rather than an EPERM later.

use std::fs;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
#[error(
    "fleetnet agent needs CAP_NET_ADMIN and CAP_BPF (or CAP_SYS_ADMIN) to load and attach \
     eBPF programs; run it as root or grant these capabilities"
)]
pub struct MissingPrivileges;

/// Fails unless the effective capability set allows loading and attaching.
pub fn check() -> Result<(), MissingPrivileges> {
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        Ok(())
    } else {
        Err(MissingPrivileges)
    }
}

fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}
