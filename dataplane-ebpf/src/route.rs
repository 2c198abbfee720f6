//! Where a packet goes once its destination is known: into a local pod with
//! `bpf_redirect_peer`, into the VXLAN device with a tunnel key, or,
//! natively, out of the interface and to the next hop the kernel's FIB
//! gives.

use aya_ebpf::{
    bindings::{
        BPF_F_ZERO_CSUM_TX, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
        bpf_redir_neigh, bpf_tunnel_key,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
        bpf_skb_set_tunnel_key,
    },
    programs::TcContext,
};
use dataplane_common::{Direction, DropReason, EndpointInfo, IpcacheEntry, NodeConfig, Verdict};

use crate::{
    checksum,
    parse::{self, ETH_HLEN, EthHdr, Ipv4, Ipv4Hdr, L4},
    policy,
    verdict::{self, Drop, Flow},
};

/// `AF_INET`, as the FIB and neighbour helpers take it.
const AF_INET: u8 = 2;

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
        (*ip).check = checksum::after_decrease(check, 0x0100).to_be();
    }
    Ok(())
}

/// Delivers a packet another node sent, through the tunnel (from_overlay)
/// or natively over the uplink (from_underlay), into a pod of this one: a
/// reply of a connection tracked here (`reply`) passes, anything else
/// meets the pod's ingress policy with the source identity the ipcache
/// gave.
#[inline(always)]
pub fn from_remote_to_local_pod(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: Option<&L4>,
    reply: bool,
    source: &IpcacheEntry,
    endpoint: &EndpointInfo,
    local_cluster: u16,
) -> Result<i32, Drop> {
    let flow = Flow::new()
        .clusters(source.cluster_id, local_cluster)
        .identities(source.identity, endpoint.identity)
        .packet(ip, l4);
    if !reply && !policy::admit(endpoint, Direction::Ingress, source.identity, ip, l4) {
        return Err(flow.drop(DropReason::PolicyDeniedIngress));
    }
    to_local_pod::<true>(ctx, endpoint, Direction::Ingress, &flow)
}

/// Delivers into a pod of this node, straight into its network namespace.
/// `RECORD`: count the verdict (always, but for the benchmark's
/// per-stage breakdown).
#[inline(always)]
pub fn to_local_pod<const RECORD: bool>(
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
    if !RECORD {
        return Ok(action);
    }
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
/// `RECORD` as for [`to_local_pod`].
#[inline(always)]
pub fn to_tunnel<const RECORD: bool>(
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
    if !RECORD {
        return Ok(action);
    }
    Ok(verdict::forward(
        ctx,
        Verdict::Tunnelled,
        Direction::Egress,
        flow,
        action,
    ))
}

/// Where the kernel's FIB sends `dst`, looked up as if the packet came in
/// on `ifindex` (or, with `output`, as if this host sent it): the result
/// code and the filled-in parameters (egress interface, next hop, MACs).
#[inline(always)]
pub fn lookup(
    ctx: &TcContext,
    src: [u8; 4],
    dst: [u8; 4],
    ifindex: u32,
    output: bool,
) -> (i64, bpf_fib_lookup) {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    let flags = if output {
        aya_ebpf::bindings::BPF_FIB_LOOKUP_OUTPUT
    } else {
        0
    };
    // SAFETY: the parameters live on the stack for the duration of the call.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    (ret, fib)
}

/// Sends to a pod on another node natively, unencapsulated: out of the
/// interface, and to the next hop, the kernel's FIB gives (the underlay
/// routes every cluster's pod CIDRs). An address the FIB cannot route is
/// left to the stack, which answers as a router does.
#[inline(always)]
pub fn natively(ctx: &TcContext, ip: &Ipv4, flow: &Flow) -> Result<i32, Drop> {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (ret, fib) = lookup(ctx, ip.src, ip.dst, ifindex, false);
    let action = match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            decrement_ttl(ctx)?;
            let eth = parse::ptr_at::<EthHdr>(ctx, 0)?;
            // SAFETY: ptr_at checked the bounds.
            unsafe {
                (*eth).dst = fib.dmac;
                (*eth).src = fib.smac;
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(fib.ifindex, 0) as i32 }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            decrement_ttl(ctx)?;
            // SAFETY: bpf_redir_neigh is plain data; all-zero is a valid value.
            let mut next_hop: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            next_hop.nh_family = u32::from(AF_INET);
            // SAFETY: the lookup filled in the IPv4 next hop.
            next_hop.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
            // SAFETY: the next hop lives on the stack for the duration of the call.
            unsafe {
                bpf_redirect_neigh(
                    fib.ifindex,
                    &mut next_hop,
                    size_of::<bpf_redir_neigh>() as i32,
                    0,
                ) as i32
            }
        }
        _ => return Ok(verdict::to_stack(ctx, Direction::Egress, flow)),
    };
    Ok(verdict::forward(
        ctx,
        Verdict::Routed,
        Direction::Egress,
        flow,
        action,
    ))
}
