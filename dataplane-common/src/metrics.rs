//! Per-CPU packet and byte counters, one entry per (reason, direction,
//! source cluster, destination cluster).

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MetricsKey {
    /// A [`crate::Verdict`] (below 128) or a [`crate::DropReason`] (128 and up).
    pub reason: u8,
    /// A [`crate::Direction`].
    pub direction: u8,
    pub _pad: [u8; 2],
    /// Cluster the packet came from; 0 when not known.
    pub src_cluster: u16,
    /// Cluster the packet was going to; 0 when not known.
    pub dst_cluster: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MetricsValue {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(size_of::<MetricsKey>() == 8);
const _: () = assert!(size_of::<MetricsValue>() == 16);
