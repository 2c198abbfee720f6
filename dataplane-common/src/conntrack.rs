//! Connection tracking. A load-balanced connection has two entries: the
//! original direction (client -> VIP) remembers the backend, so later
//! packets keep it whatever happens to the backend set; the reply direction
//! (backend -> client) remembers the VIP to put back as the source (reverse
//! NAT). Connections into or out of a pod whose reverse direction is under
//! policy get a reply entry too, so their replies pass that policy.

/// A flow as seen in one direction. Addresses are IPv4 in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Ports in network byte order.
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// [`CtKey::ORIGINAL`] or [`CtKey::REPLY`].
    pub direction: u8,
    /// For ICMP echo, [`CtKey::ECHO_REQUEST`] or [`CtKey::ECHO_REPLY`]
    /// (the echo id is in both ports); 0 otherwise. Without it, a peer's
    /// echo request reusing the id of one sent to it would pass as the
    /// reply.
    pub icmp_echo: u8,
    pub _pad: u8,
}

impl CtKey {
    pub const ORIGINAL: u8 = 0;
    pub const REPLY: u8 = 1;
    pub const ECHO_REQUEST: u8 = 1;
    pub const ECHO_REPLY: u8 = 2;

    /// The `icmp_echo` of the packets answering one with `icmp_echo`.
    pub const fn answering(icmp_echo: u8) -> u8 {
        match icmp_echo {
            Self::ECHO_REQUEST => Self::ECHO_REPLY,
            Self::ECHO_REPLY => Self::ECHO_REQUEST,
            other => other,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// Original direction: the backend; reply direction: the VIP.
    pub addr: [u8; 4],
    /// Network byte order, like `addr`'s counterpart port.
    pub port: u16,
    /// Cluster of the backend (for metrics).
    pub cluster_id: u16,
    /// `bpf_ktime_get_ns()` after which the entry is dead.
    pub expires: u64,
    /// When `expires` was last pushed forward (entries are refreshed at
    /// most once a second, not on every packet).
    pub refreshed: u64,
    /// TCP state, [`CtEntry::TCP_OPENING`] and so on.
    pub state: u8,
    /// [`CtEntry::NAT`] for a load-balanced flow.
    pub flags: u8,
    pub _pad: [u8; 6],
}

impl CtEntry {
    pub const TCP_OPENING: u8 = 0;
    pub const ESTABLISHED: u8 = 1;
    pub const CLOSING: u8 = 2;
    /// A reply entry of a load-balanced flow: its source is rewritten to
    /// `addr`/`port`. Without it a reply entry only lets replies of an
    /// allowed connection past policy.
    pub const NAT: u8 = 1;
}

/// Lifetimes in nanoseconds, as Cilium's defaults.
pub const CT_LIFETIME_SYN_NS: u64 = 60_000_000_000;
pub const CT_LIFETIME_TCP_NS: u64 = 21_600_000_000_000;
pub const CT_LIFETIME_CLOSING_NS: u64 = 10_000_000_000;
pub const CT_LIFETIME_NON_TCP_NS: u64 = 60_000_000_000;
/// Refresh an entry's lifetime at most this often.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

const _: () = assert!(size_of::<CtKey>() == 16);
const _: () = assert!(size_of::<CtEntry>() == 32);
