//! Where a packet goes once its destination is known: into a local pod with
//! `bpf_redirect_peer`, or into the VXLAN device with a tunnel key.

use aya_ebpf::{
    bindings::{BPF_F_ZERO_CSUM_TX, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use dataplane_common::{Direction, DropReason, EndpointInfo, IpcacheEntry, NodeConfig, Verdict};

use crate::{
    parse::{self, ETH_HLEN, EthHdr, Ipv4Hdr},
    verdict::{self, Drop, Flow},
};

/// TTL of the outer header of tunnelled packets.
const TUNNEL_TTL: u8 = 64;

/// Routing is one hop: decrement the TTL and patch the IPv4 checksum in
/// place (direct packet writes, no helper calls). Callers leave packets
/// with TTL <= 1 to the stack, which answers with ICMP time exceeded.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Result<(), Drop> {
    let ip = parse::ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: ptr_at checked the bounds; nothing changed the packet since.
    unsafe {
        // The checksum covers TTL and protocol as one 16-bit word with the
        // TTL in its high byte, so that word drops by 0x0100.
        let check = u16::from_be((*ip).check);
        (*ip).ttl -= 1;
        (*ip).check = checksum_after_decrease(check, 0x0100).to_be();
    }
    Ok(())
}

/// RFC 1624, eqn. 3: after a header word m decreases by `delta` to m',
/// HC' = ~(~HC + ~m + m'), and ~m + m' = ~delta in one's complement.
#[inline(always)]
fn checksum_after_decrease(check: u16, delta: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!delta);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Delivers into a pod of this node, straight into its network namespace.
#[inline(always)]
pub fn to_local_pod(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    direction: Direction,
    flow: &Flow,
) -> Result<i32, Drop> {
    let eth = parse::ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe {
        (*eth).dst = endpoint.mac;
        (*eth).src = endpoint.node_mac;
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } as i32;
    Ok(verdict::forward(
        ctx,
        Verdict::DeliveredLocal,
        direction,
        flow,
        action,
    ))
}

/// Sends to a pod on another node of any cluster through VXLAN. The VNI is
/// this node's cluster id, which the receiver checks against the source.
#[inline(always)]
pub fn to_tunnel(
    ctx: &TcContext,
    node: &NodeConfig,
    remote: &IpcacheEntry,
    flow: &Flow,
) -> Result<i32, Drop> {
    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = node.cluster_id as u32;
    // The helper takes the remote address in host byte order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(remote.tunnel_endpoint);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: the key lives on the stack for the duration of the call.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            size_of::<bpf_tunnel_key>() as u32,
            BPF_F_ZERO_CSUM_TX as u64,
        )
    };
    if ret != 0 {
        return Err(flow.drop(DropReason::HelperFailed));
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(node.tunnel_ifindex, 0) } as i32;
    Ok(verdict::forward(
        ctx,
        Verdict::Tunnelled,
        Direction::Egress,
        flow,
        action,
    ))
}
