//! Identity-based policy lookups: a packet between a local endpoint and a
//! peer passes when an entry covers the peer's identity (or any identity),
//! the protocol and the port. Traffic with this node's host is always
//! allowed, as Kubernetes NetworkPolicy requires (kubelet probes).

use dataplane_common::{Direction, EndpointInfo, PolicyKey, identity};

use crate::{
    conntrack, maps,
    parse::{self, Ipv4, L4},
};

/// Policy for a packet opening or continuing a connection of `endpoint`
/// (not a reply) with `peer`: false when the endpoint's policy in
/// `direction` denies it. When the other direction is under policy too,
/// the connection is recorded so its replies pass.
#[inline(always)]
pub fn admit(
    endpoint: &EndpointInfo,
    direction: Direction,
    peer: u32,
    ip: &Ipv4,
    l4: Option<&L4>,
) -> bool {
    let (this, other) = match direction {
        Direction::Ingress => (
            EndpointInfo::INGRESS_ENFORCED,
            EndpointInfo::EGRESS_ENFORCED,
        ),
        Direction::Egress => (
            EndpointInfo::EGRESS_ENFORCED,
            EndpointInfo::INGRESS_ENFORCED,
        ),
    };
    let port = parse::policy_port(ip, l4);
    if endpoint.enforces(this) && !allows(endpoint.policy_id, direction, peer, ip.protocol, port) {
        return false;
    }
    if let Some(l4) = l4
        && endpoint.enforces(other)
    {
        conntrack::expect_reply(ip, l4);
    }
    true
}

/// True when endpoints of policy group `policy_id` may exchange this
/// packet with `identity`.
/// `port` is the destination port as in the packet (0 without ports).
#[inline(always)]
fn allows(policy_id: u16, direction: Direction, identity: u32, protocol: u8, port: u16) -> bool {
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
