//! Identity-based policy lookups: a packet between a local endpoint and a
//! peer passes when an entry covers the peer's identity (or any identity),
//! the protocol and the port. Traffic with this node's host is always
//! allowed, as Kubernetes NetworkPolicy requires (kubelet probes).

use dataplane_common::{Direction, PolicyKey, identity};

use crate::maps;

/// True when endpoints of policy group `policy_id` may exchange this
/// packet with `identity`.
/// `port` is the destination port as in the packet (0 without ports).
#[inline(always)]
pub fn allows(
    policy_id: u16,
    direction: Direction,
    identity: u32,
    protocol: u8,
    port: u16,
) -> bool {
    if identity == identity::HOST {
        return true;
    }
    let mut key = PolicyKey {
        policy_id,
        direction: direction as u8,
        _pad: 0,
        identity: identity.to_be_bytes(),
        protocol,
        _pad2: 0,
        port: port.to_ne_bytes(),
    };
    if maps::policy_allows(key) {
        return true;
    }
    key.identity = PolicyKey::ANY_IDENTITY.to_be_bytes();
    maps::policy_allows(key)
}
