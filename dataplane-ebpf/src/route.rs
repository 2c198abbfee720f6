//! Where a packet goes once its destination is known: into a local pod with
//! `bpf_redirect_peer`, or into the VXLAN device with a tunnel key.

use aya_ebpf::{
    bindings::{BPF_F_ZERO_CSUM_TX, bpf_tunnel_key},
    helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use dataplane_common::{Direction, DropReason, EndpointInfo, IpcacheEntry, NodeConfig, Verdict};

use crate::{
    parse::{IPV4_CSUM_OFF, IPV4_TTL_OFF, Ipv4},
    verdict::{self, Drop},
};

/// TTL of the outer header of tunnelled packets.
const TUNNEL_TTL: u8 = 64;

/// Routing is one hop: decrement the TTL and patch the IPv4 checksum.
/// Callers leave packets with TTL <= 1 to the stack, which answers with
/// ICMP time exceeded.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ip: &Ipv4) -> Result<(), Drop> {
    // The checksum covers TTL and protocol as one 16-bit word.
    let old = u16::from_be_bytes([ip.ttl, ip.protocol]);
    let new = u16::from_be_bytes([ip.ttl - 1, ip.protocol]);
    ctx.l3_csum_replace(IPV4_CSUM_OFF, old.to_be() as u64, new.to_be() as u64, 2)
        .map_err(|_| Drop::new(DropReason::HelperFailed))?;
    ctx.store(IPV4_TTL_OFF, &(ip.ttl - 1), 0)
        .map_err(|_| Drop::new(DropReason::HelperFailed))
}

/// Delivers into a pod of this node, straight into its network namespace.
#[inline(always)]
pub fn to_local_pod(
    ctx: &TcContext,
    endpoint: &EndpointInfo,
    direction: Direction,
    src_cluster: u16,
    dst_cluster: u16,
) -> Result<i32, Drop> {
    let macs = MacPair {
        dst: endpoint.mac,
        src: endpoint.node_mac,
    };
    ctx.store(0, &macs, 0)
        .map_err(|_| Drop::new(DropReason::HelperFailed))?;
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect_peer(endpoint.ifindex, 0) } as i32;
    Ok(verdict::forward(
        ctx,
        Verdict::DeliveredLocal,
        direction,
        src_cluster,
        dst_cluster,
        action,
    ))
}

/// Sends to a pod on another node of any cluster through VXLAN. The VNI is
/// this node's cluster id, which the receiver checks against the source.
#[inline(always)]
pub fn to_tunnel(ctx: &TcContext, node: &NodeConfig, remote: &IpcacheEntry) -> Result<i32, Drop> {
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
        return Err(
            Drop::new(DropReason::HelperFailed).clusters(node.cluster_id, remote.cluster_id)
        );
    }
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(node.tunnel_ifindex, 0) } as i32;
    Ok(verdict::forward(
        ctx,
        Verdict::Tunnelled,
        Direction::Egress,
        node.cluster_id,
        remote.cluster_id,
        action,
    ))
}

#[repr(C)]
struct MacPair {
    dst: [u8; 6],
    src: [u8; 6],
}
