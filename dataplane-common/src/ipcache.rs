//! The ipcache: every known pod IP and pod CIDR of the mesh, mapped to the
//! identity, cluster and node (tunnel endpoint) that own it.
//!
//! Exact IPv4 addresses (pods' /32s) live in a hash map keyed by the bare
//! address (4 bytes: the hot lookup hashes little). Every other prefix
//! lives in an LPM trie whose key data is an [`IpKey`]; the prefix length
//! given to the trie counts the key's leading family/padding word too, so
//! a /24 IPv4 CIDR has trie prefix length `IpKey::PREFIX_BASE + 24`.
//! Matching the family word in full keeps IPv4 and IPv6 entries apart in
//! one trie, the same layout Cilium uses. (A trie keyed by the bare IPv4
//! address measured no faster: its walk, not its key, is the cost.)

/// An IP address with its family, usable as LPM trie data and hash key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct IpKey {
    /// [`IpKey::FAMILY_V4`] or [`IpKey::FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// Address bytes in network order; IPv4 uses the first four.
    pub addr: [u8; 16],
}

impl IpKey {
    pub const FAMILY_V4: u8 = 4;
    pub const FAMILY_V6: u8 = 6;
    /// Bits of the key that precede the address: the family and padding.
    pub const PREFIX_BASE: u32 = 32;

    pub const fn v4(addr: [u8; 4]) -> Self {
        Self {
            family: Self::FAMILY_V4,
            _pad: [0; 3],
            addr: [
                addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        }
    }

    /// The IPv4 address, when this is an IPv4 key.
    pub const fn as_v4(&self) -> Option<[u8; 4]> {
        if self.family == Self::FAMILY_V4 {
            Some([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
        } else {
            None
        }
    }
}

/// What the mesh knows about an address or CIDR.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IpcacheEntry {
    /// Security identity: cluster id in the high 16 bits (see [`crate::identity`]).
    pub identity: u32,
    /// Underlay IPv4 of the node that hosts the address, network order.
    /// All zero when the address lives on this node.
    pub tunnel_endpoint: [u8; 4],
    /// The cluster that owns the address (and that must tunnel it).
    pub cluster_id: u16,
    /// [`IpcacheEntry::NATIVE`], or zero.
    pub flags: u16,
}

impl IpcacheEntry {
    /// Routed to and from its node natively (the underlay routes the
    /// cluster's pod CIDRs), not tunnelled: both clusters publish so.
    pub const NATIVE: u16 = 1;

    pub const fn is_native(&self) -> bool {
        self.flags & Self::NATIVE != 0
    }

    pub const fn is_local(&self) -> bool {
        u32::from_ne_bytes(self.tunnel_endpoint) == 0
    }
}

const _: () = assert!(size_of::<IpKey>() == 20);
const _: () = assert!(size_of::<IpcacheEntry>() == 12);
const _: () = assert!(core::mem::offset_of!(IpKey, addr) == 4);
const _: () = assert!(core::mem::offset_of!(IpcacheEntry, cluster_id) == 8);
