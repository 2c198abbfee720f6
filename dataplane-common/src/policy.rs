//! Identity-based policy: which remote identities a local endpoint may
//! exchange traffic with, per direction, protocol and port.
//!
//! Entries belong to policy groups, not to endpoints: endpoints selected by
//! the same policies (pods of one workload) share one set of entries, named
//! by the `policy_id` in their endpoint info.
//!
//! The policy map is an LPM trie over [`PolicyKey`]. The group,
//! direction and identity are always matched in full ([`PolicyKey::FIXED_BITS`]);
//! a rule for any protocol stops there; a rule for one protocol and any
//! port adds the protocol byte and its padding ([`PolicyKey::PROTOCOL_BITS`]);
//! a port range adds as many leading bits of the (big-endian) port as its
//! prefixes need. Identity 0 stands for "any peer". The datapath looks up
//! the peer's identity, then identity 0.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyKey {
    pub policy_id: u16,
    /// [`crate::Direction`] as a code.
    pub direction: u8,
    pub _pad: u8,
    /// The peer's identity, big-endian so prefixes are bytewise; 0 is any.
    pub identity: [u8; 4],
    pub protocol: u8,
    pub _pad2: u8,
    /// The port, big-endian.
    pub port: [u8; 2],
}

impl PolicyKey {
    /// Policy group, direction, padding and identity.
    pub const FIXED_BITS: u32 = 64;
    /// ... plus protocol and its padding byte.
    pub const PROTOCOL_BITS: u32 = 80;
    /// ... plus the whole port.
    pub const FULL_BITS: u32 = 96;
    /// Identity meaning any peer.
    pub const ANY_IDENTITY: u32 = 0;
}

/// Value of a policy entry.
pub const POLICY_ALLOW: u8 = 1;

const _: () = assert!(size_of::<PolicyKey>() == 12);
