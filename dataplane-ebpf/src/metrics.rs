//! Per-CPU counters: packets and bytes by outcome, load-balancing
//! selections by service and backend cluster, and events lost to a full
//! ring.

use aya_ebpf::bindings::BPF_NOEXIST;
use dataplane_common::{Direction, MetricsKey, MetricsValue, SelectionKey};

use crate::maps::{EVENTS_LOST, METRICS, SELECTIONS};

#[inline(always)]
pub fn count(
    reason: u8,
    direction: Direction,
    protocol: u8,
    src_cluster: u16,
    dst_cluster: u16,
    bytes: u32,
) {
    let key = MetricsKey {
        reason,
        direction: direction as u8,
        protocol,
        _pad: 0,
        src_cluster,
        dst_cluster,
    };
    if add(&key, bytes) {
        return;
    }
    let first = MetricsValue {
        packets: 1,
        bytes: bytes as u64,
    };
    // Another CPU may create the entry between our lookup and insert; then
    // the insert fails and the second lookup finds it.
    if METRICS.insert(key, first, BPF_NOEXIST as u64).is_err() {
        add(&key, bytes);
    }
}

#[inline(always)]
fn add(key: &MetricsKey, bytes: u32) -> bool {
    match METRICS.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: per-CPU value, only this CPU writes it during the run.
            unsafe {
                (*value).packets += 1;
                (*value).bytes += bytes as u64;
            }
            true
        }
        None => false,
    }
}

/// A new connection to `service_id` balanced to a backend in `cluster_id`.
#[inline(always)]
pub fn count_selection(service_id: u32, cluster_id: u16) {
    let key = SelectionKey {
        service_id,
        cluster_id,
        _pad: [0; 2],
    };
    if let Some(count) = SELECTIONS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it during the run.
        unsafe { *count += 1 };
    } else if SELECTIONS.insert(key, 1, BPF_NOEXIST as u64).is_err()
        && let Some(count) = SELECTIONS.get_ptr_mut(key)
    {
        // SAFETY: as above.
        unsafe { *count += 1 };
    }
}

#[inline(always)]
pub fn count_lost_event() {
    if let Some(count) = EVENTS_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it during the run.
        unsafe { *count += 1 };
    }
}
