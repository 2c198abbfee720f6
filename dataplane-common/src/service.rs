//! Services, backends and the Maglev lookup table.
//!
//! A service frontend (VIP, port, protocol) maps to a service id and the
//! number of backends currently in use. The Maglev table is one flat array
//! with a slice of `NodeConfig::maglev_table_size` slots per service id: the
//! program hashes a flow to a slot of its service's slice, and the slot
//! holds a backend id. The agent computes the slices (consistent hashing,
//! so one backend more or less moves about 1/N of the slots).

use crate::IpKey;

/// Protocol numbers as they appear in IPv4 headers.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The virtual IP (ClusterIP), IPv4 in network order: an 8-byte key
    /// hashes faster than one sized for IPv6, which would get a map of
    /// its own (as Cilium keeps LB4 and LB6 apart).
    pub vip: [u8; 4],
    /// Service port, network byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// Index of the service's slice in the Maglev table (1-based; 0 unused).
    pub service_id: u32,
    /// Backends in the table; 0 means no backend is ready.
    pub backend_count: u16,
    /// Reserved; zero.
    pub flags: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: IpKey,
    /// Target port, network byte order.
    pub port: u16,
    /// Cluster the backend lives in (for metrics).
    pub cluster_id: u16,
}

const _: () = assert!(size_of::<ServiceKey>() == 8);
const _: () = assert!(size_of::<ServiceInfo>() == 8);
const _: () = assert!(size_of::<Backend>() == 24);
