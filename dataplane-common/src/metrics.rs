//! Per-CPU counters: packets and bytes per (reason, direction, protocol,
//! source cluster, destination cluster), and the connections load balancing
//! sent to each cluster's backends of each service.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MetricsKey {
    /// A [`crate::Verdict`] (below 128) or a [`crate::DropReason`] (128 and up).
    pub reason: u8,
    /// A [`crate::Direction`].
    pub direction: u8,
    /// IP protocol number; 0 for frames that are not IPv4.
    pub protocol: u8,
    pub _pad: u8,
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

/// New connections balanced to a backend of `cluster_id` for service
/// `service_id` (the value is a per-CPU `u64` count).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SelectionKey {
    pub service_id: u32,
    pub cluster_id: u16,
    pub _pad: [u8; 2],
}

const _: () = assert!(size_of::<MetricsKey>() == 8);
const _: () = assert!(size_of::<SelectionKey>() == 8);
const _: () = assert!(size_of::<MetricsValue>() == 16);
