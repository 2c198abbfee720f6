//! Per-CPU packet and byte counters.

use aya_ebpf::bindings::BPF_NOEXIST;
use dataplane_common::{Direction, MetricsKey, MetricsValue};

use crate::maps::METRICS;

#[inline(always)]
pub fn count(reason: u8, direction: Direction, src_cluster: u16, dst_cluster: u16, bytes: u32) {
    let key = MetricsKey {
        reason,
        direction: direction as u8,
        _pad: [0; 2],
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
